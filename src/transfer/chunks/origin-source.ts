import { type BlobLocator, type BlobSource, bytesFrom } from '../types.js'
import { type ChunkPlan, chunkBounds } from './plan.js'
import type { ChunkSource } from './scheduler.js'

/** how much each new chunk weighs in the averages of `depth` */
const WEIGHT = 0.25
/** requests `depth` asks for at most */
const MAX_DEPTH = 4

/** Origin as a chunk source: one ranged request per chunk. It holds everything. */
export class OriginChunkSource implements ChunkSource {
  readonly id = 'origin'
  readonly kind = 'origin' as const
  private readonly source: BlobSource
  private readonly locator: BlobLocator
  private readonly plan: ChunkPlan

  private readonly onBytes: ((bytes: number) => void) | undefined
  /** averages over the last chunks: ms to a response's head, and ms of its body scaled to a whole chunk */
  private headMs = 0
  private bodyMs = 0
  /** the largest `depth` so far */
  deepest = 1

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

  /**
   * How many requests keep this node's link to origin busy: one, plus one for each time a
   * chunk's body would have gone by while the next request waits for its answer's head. On a
   * link that a fleet shares, a body takes seconds and the head milliseconds: one request (more
   * flows at a congested origin only starve each other, see runSwarmDownload). From a
   * far origin on a fast link the head (a round trip and origin's own time) takes about as long
   * as the body, and one request at a time would leave the link idle half the time.
   */
  depth(): number {
    if (this.bodyMs <= 0) return 1
    return Math.min(MAX_DEPTH, 1 + Math.round(this.headMs / this.bodyMs))
  }

  async fetch(index: number, signal: AbortSignal, into: Buffer): Promise<Uint8Array> {
    const { start, end } = chunkBounds(this.plan, index)
    const length = end - start
    const asked = Date.now()
    const res = await this.source.open(this.locator, { signal, offset: start, length })
    const head = Date.now()
    let filled = 0
    try {
      for await (const data of bytesFrom(res, start)) {
        const take = Math.min(data.byteLength, length - filled)
        data.copy(into, filled, 0, take)
        filled += take
        this.onBytes?.(take)
        if (filled === length) break
      }
    } finally {
      res.body.destroy()
    }
    if (filled !== length) throw new Error(`origin sent ${filled} of ${length} bytes of chunk ${index}`)
    const bodyMs = ((Date.now() - head) * this.plan.chunkSize) / length
    this.headMs = this.bodyMs === 0 ? head - asked : this.headMs + WEIGHT * (head - asked - this.headMs)
    this.bodyMs = this.bodyMs === 0 ? bodyMs : this.bodyMs + WEIGHT * (bodyMs - this.bodyMs)
    this.deepest = Math.max(this.deepest, this.depth())
    return into
  }
}
