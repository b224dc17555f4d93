import type { ChunkMemory } from '../download.js'

/**
 * A download's verified chunks that are still in memory: the last few it wrote (`keep`), and
 * those ahead of the in-order prefix that it holds for hashing (`held`, owned by the download).
 * Peers ask for a chunk soon after this node got it (a fan-out passes every chunk on as it
 * lands) and the runtime's stream reads it as soon as the prefix reaches it: both copy it from
 * here instead of reading the file back, which costs a system call on the thread pool and its
 * round trip as well as the copy (`scripts/bench/store`: 0.19 ms of CPU per MiB read back from
 * the page cache, 0.13 ms copied from memory, on a quiet machine).
 *
 * The buffers are the download's chunk buffers: one that drops out of the window goes back
 * through `release`. Readers copy from them synchronously, so none is held past a turn of the
 * event loop.
 */
export class HotChunks implements ChunkMemory {
  readonly chunkSize: number
  private readonly limit: number
  private readonly held: ReadonlyMap<number, Uint8Array>
  private readonly release: (bytes: Uint8Array) => void
  /** chunk index → bytes, oldest first */
  private readonly recent = new Map<number, Uint8Array>()

  /** `limit`: chunks kept after they were written */
  constructor(chunkSize: number, limit: number, held: ReadonlyMap<number, Uint8Array>, release: (bytes: Uint8Array) => void) {
    this.chunkSize = chunkSize
    this.limit = limit
    this.held = held
    this.release = release
  }

  get(index: number): Uint8Array | undefined {
    return this.recent.get(index) ?? this.held.get(index)
  }

  /** Keeps a written chunk's bytes (the window takes the buffer); the oldest goes when over the limit. */
  keep(index: number, bytes: Uint8Array): void {
    this.recent.set(index, bytes)
    while (this.recent.size > this.limit) {
      const [oldest, old] = this.recent.entries().next().value as [number, Uint8Array]
      this.recent.delete(oldest)
      this.release(old)
    }
  }

  /** Gives every kept buffer back. */
  clear(): void {
    for (const bytes of this.recent.values()) this.release(bytes)
    this.recent.clear()
  }
}
