import type { BlobLocator, BlobSource } from '../types.js'
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

  async fetch(index: number, signal: AbortSignal): Promise<Uint8Array> {
    const { start, end } = chunkBounds(this.plan, index)
    const length = end - start
    const res = await this.source.open(this.locator, { signal, offset: start, length })
    const out = Buffer.allocUnsafe(length)
    let skip = start - res.offset
    let filled = 0
    try {
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        let data = chunk
        if (skip > 0) {
          if (data.byteLength <= skip) {
            skip -= data.byteLength
            continue
          }
          data = data.subarray(skip)
          skip = 0
        }
        const take = Math.min(data.byteLength, length - filled)
        data.copy(out, filled, 0, take)
        filled += take
        this.onBytes?.(take)
        if (filled === length) break
      }
    } finally {
      res.body.destroy()
    }
    if (filled !== length) throw new Error(`origin sent ${filled} of ${length} bytes of chunk ${index}`)
    return out
  }
}
