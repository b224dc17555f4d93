import { createHash, type Hash } from 'node:crypto'
import { type ChunkPlan, chunkBounds } from './plan.js'

/**
 * Which chunks of one blob a node holds verified, and their hashes: what it tells peers about a
 * blob it is still downloading, so that they can take those chunks from it (in-flight sharing).
 */
export class ChunkState {
  readonly plan: ChunkPlan
  readonly hashes: (string | undefined)[]
  readonly have: boolean[]
  /** the hashes of the chunks held, '' for the others: the table peers are told of */
  private readonly shown: string[]
  private heldCount = 0
  private seq: Hash | undefined
  private seqIndex = 0
  private seqFill = 0

  constructor(plan: ChunkPlan, table?: readonly (string | undefined)[]) {
    this.plan = plan
    this.hashes = table ? [...table] : new Array(plan.count).fill(undefined)
    this.have = new Array(plan.count).fill(false)
    this.shown = new Array(plan.count).fill('')
  }

  /** chunks held */
  get held(): number {
    return this.heldCount
  }

  get complete(): boolean {
    return this.heldCount === this.plan.count
  }

  /** Records a chunk as held; returns true the first time. */
  mark(index: number, hash: string): boolean {
    if (this.have[index]) return false
    this.have[index] = true
    this.hashes[index] = hash
    this.shown[index] = hash
    this.heldCount++
    return true
  }

  /**
   * For bytes arriving in order (a stream from origin): hashes them chunk by chunk and marks each
   * chunk once its last byte arrived. Returns the chunks completed by these bytes.
   */
  feed(bytes: Uint8Array): number[] {
    const completed: number[] = []
    let offset = 0
    while (offset < bytes.byteLength && this.seqIndex < this.plan.count) {
      const { start, end } = chunkBounds(this.plan, this.seqIndex)
      const need = end - start - this.seqFill
      const take = Math.min(need, bytes.byteLength - offset)
      this.seq ??= createHash('sha256')
      this.seq.update(bytes.subarray(offset, offset + take))
      this.seqFill += take
      offset += take
      if (this.seqFill === end - start) {
        this.mark(this.seqIndex, this.seq.digest('hex'))
        completed.push(this.seqIndex)
        this.seq = undefined
        this.seqFill = 0
        this.seqIndex++
      }
    }
    return completed
  }

  /** Starts the in-order hasher at `position` (a resumed download re-hashes nothing it skips). */
  skipTo(position: number): void {
    this.seqIndex = Math.floor(position / this.plan.chunkSize)
    this.seqFill = 0
    this.seq = undefined
    if (position % this.plan.chunkSize !== 0) this.seqIndex = this.plan.count // partial chunk: give up on the table
  }

  /**
   * The peer-protocol view: hashes only of chunks held. Its arrays are this state's own, not
   * copies (a long poll's answer copied two arrays of the blob's length): they grow as chunks
   * are marked, both at once, and must not be written to.
   */
  info(): { size: number; chunkSize: number; table: string[]; have: boolean[] } {
    return { size: this.plan.size, chunkSize: this.plan.chunkSize, table: this.shown, have: this.have }
  }
}
