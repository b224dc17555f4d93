import { type BlobLocator, type BlobSource, bytesFrom } from '../types.js'
import { type ChunkPlan, chunkBounds } from './plan.js'
import type { ChunkSource } from './scheduler.js'

/** Origin as a chunk source: one ranged request per chunk. It holds everything. */
export class OriginChunkSource implements ChunkSource {
  readonly id = 'origin'
  readonly kind = 'origin' as const
  private readonly source: BlobSource
  private readonly locator: BlobLocator
  private readonly plan: ChunkPlan

  private readonly onBytes: ((bytes: number) => void) | undefined

  /** `onBytes`: bytes as they arrive (a chunk is only returned whole) */
  constructor(source: BlobSource, locator: BlobLocator, plan: ChunkPlan, onBytes?: (bytes: number) => void) {
    this.source = source
    this.locator = locator
    this.plan = plan
    this.onBytes = onBytes
  }

  has(): boolean {
    return true
  }

  async fetch(index: number, signal: AbortSignal, into: Buffer, onBytes?: (bytes: number) => void): Promise<Uint8Array> {
    const { start, end } = chunkBounds(this.plan, index)
    const length = end - start
    const res = await this.source.open(this.locator, { signal, offset: start, length })
    let filled = 0
    try {
      for await (const data of bytesFrom(res, start)) {
        const take = Math.min(data.byteLength, length - filled)
        data.copy(into, filled, 0, take)
        filled += take
        this.onBytes?.(take)
        onBytes?.(take)
        if (filled === length) break
      }
    } finally {
      res.body.destroy()
    }
    if (filled !== length) throw new Error(`origin sent ${filled} of ${length} bytes of chunk ${index}`)
    return into
  }
}
