/**
 * Chunk-sized buffers, reused. A download receives a blob as many chunk-sized pieces of memory;
 * allocating each one fresh costs page faults and garbage-collection work that, at a gigabyte a
 * second, weigh as much as hashing the bytes (profiled: GC and buffer copies were a fifth of a
 * pulling node's CPU). Buffers go back to the pool once their bytes are written and hashed.
 *
 * Only buffers this pool made are taken back (a WeakSet of their memory), so a buffer that some
 * other code still holds can never be handed out again by mistake.
 */
export class ChunkBuffers {
  readonly size: number
  private readonly max: number
  private readonly free: ArrayBuffer[] = []
  private readonly mine = new WeakSet<ArrayBuffer>()

  /** `size`: bytes of each buffer (the chunk size); `max`: buffers kept when idle */
  constructor(size: number, max: number) {
    this.size = size
    this.max = max
  }

  /** A buffer of `length` bytes (contents undefined): pooled when `length` fits a pool buffer. */
  take(length: number): Buffer {
    if (length > this.size) return Buffer.allocUnsafeSlow(length)
    let memory = this.free.pop()
    if (memory === undefined) {
      memory = new ArrayBuffer(this.size)
      this.mine.add(memory)
    }
    return Buffer.from(memory, 0, length)
  }

  /** Returns a buffer from take(); the caller must not touch it afterwards. Others are ignored. */
  give(buffer: Uint8Array): void {
    const memory = buffer.buffer
    if (!(memory instanceof ArrayBuffer) || !this.mine.has(memory) || this.free.length >= this.max) return
    if (this.free.includes(memory)) throw new Error('chunk buffer given back twice')
    this.free.push(memory)
  }

  /** Lets go of the idle buffers. */
  clear(): void {
    this.free.length = 0
  }
}
