import { PeerUnreachableError } from '../peer/errors.js'
import { bitfield } from '../peer/protocol.js'
import type { PeerRef } from '../routing/types.js'
import type { ChunkPlan } from '../transfer/chunks/plan.js'
import type { PeerSource } from '../transfer/swarm-download.js'
import type { PeerBlobInfo, PeerChunkClient } from './types.js'

/** A peer as a source of a blob it has not been asked about yet: it holds nothing until it answers. */
export function unknownHoldings(plan: ChunkPlan): PeerBlobInfo {
  return { size: plan.size, chunkSize: plan.chunkSize, have: new Array(plan.count).fill(false) }
}

/**
 * Takes the chunks a peer's answer says it holds into what this node knows of it (`have` and
 * `table`, by chunk): a bitfield only grows, and a claimed hash never changes, so only chunks
 * new to `have` that come with a hash are taken. Returns how many were. An answer for another
 * chunk count is ignored.
 */
export function mergeHoldings(have: boolean[], table: (string | undefined)[], info: PeerBlobInfo): number {
  if (info.have.length !== have.length) return 0
  let added = 0
  for (let i = 0; i < have.length; i++) {
    if (have[i] || info.have[i] !== true) continue
    const hash = info.table?.[i]
    if (typeof hash !== 'string' || hash.length !== 64) continue
    have[i] = true
    table[i] = hash
    added++
  }
  return added
}

/**
 * The least time between two asks for the bitfield of a peer that is itself still downloading.
 * Each ask is a long poll (the peer answers when it holds a new chunk, or after LONG_POLL_MS),
 * so this only bounds the rate when the peer answers at once.
 */
const REFRESH_INTERVAL_MS = 250
/** …and for a peer that answered it holds nothing of the blob (yet), or did not answer */
const NOT_HELD_REFRESH_MS = 2_000
/** A bitfield refresh slower than this counts as a failure (a loaded peer answers late, not never); beyond the long poll's own wait. */
const REFRESH_TIMEOUT_MS = 20_000

/**
 * One peer as a chunk source for one blob. Its bitfield comes from `info` and is refreshed while
 * the peer is incomplete, so chunks it receives meanwhile become available (in-flight sharing):
 * one long poll at a time, answered as soon as the peer holds a chunk more than this node knows of.
 */
export class PeerChunkSource implements PeerSource {
  readonly kind = 'peer' as const
  readonly id: string
  readonly peer: PeerRef
  private have: boolean[]
  private table: (string | undefined)[]
  complete: boolean
  lastGrowth = Date.now()
  lastAnswer = Date.now()
  refreshFailures = 0
  refreshError: string | undefined
  private received = -1

  /** it answered that it has begun on the blob (reported received bytes or holds a chunk) */
  get started(): boolean {
    return this.received >= 0 || this.held > 0
  }
  private held: number
  /** the other nodes fetching the blob that the peer named last (peer exchange) */
  exchanged: readonly string[]
  private refreshing = false
  private nextRefresh = Date.now() + REFRESH_INTERVAL_MS
  private readonly client: PeerChunkClient
  private readonly digest: string
  private readonly signal: AbortSignal
  private readonly want: string | undefined
  /** the scheduler's wake-up, called when an answer names new chunks */
  private wake: (() => void) | undefined

  /**
   * `want` (`registry/name`): ask the peer to fetch the blob if it has not started, as the
   * origin fetcher of its share (see OriginStripes)
   */
  constructor(peer: PeerRef, info: PeerBlobInfo, client: PeerChunkClient, digest: string, signal: AbortSignal, want?: string) {
    this.peer = peer
    this.id = peer.id
    this.client = client
    this.digest = digest
    this.have = info.have
    this.table = info.have.map((held, i) => (held ? (info.table?.[i] ?? undefined) : undefined))
    this.exchanged = info.peers ?? []
    this.held = info.have.filter(Boolean).length
    this.complete = this.held === info.have.length
    this.signal = signal
    this.want = want
  }

  /** the hash this peer claims for a chunk it holds */
  hashOf(index: number): string | undefined {
    return this.table[index] ?? undefined
  }

  has(index: number): boolean {
    return this.have[index] === true
  }

  async fetch(index: number, signal: AbortSignal, into: Buffer): Promise<Uint8Array> {
    await this.client.fetchChunk(this.peer, this.digest, index, { signal, into })
    this.lastAnswer = Date.now() // it is alive and serving, whatever its holdings answers do
    return into
  }

  watch(wake: () => void): void {
    this.wake = wake
  }

  /** asks the peer for its holdings again, at most every REFRESH_INTERVAL_MS, until it is complete (the scheduler calls it on every pump) */
  poll(): void {
    if (!this.complete) this.maybeRefresh()
  }

  private maybeRefresh(): void {
    if (this.refreshing || Date.now() < this.nextRefresh || this.signal.aborted) return
    this.refreshing = true
    this.client
      .info(this.peer, this.digest, { signal: this.signal, waitMs: REFRESH_TIMEOUT_MS, want: this.want, held: this.held, known: this.held > 0 ? bitfield(this.have) : undefined })
      .then(
        (info) => {
          this.refreshFailures = 0
          this.refreshError = undefined
          this.lastAnswer = Date.now()
          // a peer that holds nothing answers at once: ask it less often
          this.nextRefresh = this.lastAnswer + (info === undefined ? NOT_HELD_REFRESH_MS : REFRESH_INTERVAL_MS)
          if (info === undefined) return
          if (info.peers !== undefined) this.exchanged = info.peers
          if (info.received !== undefined && info.received > this.received) {
            if (this.received >= 0) this.lastGrowth = Date.now()
            this.received = info.received
          }
          const added = mergeHoldings(this.have, this.table, info)
          if (added === 0) return
          this.held += added
          this.lastGrowth = Date.now()
          this.complete = this.held === this.have.length
          this.wake?.()
        },
        (err: unknown) => {
          this.nextRefresh = Date.now() + NOT_HELD_REFRESH_MS
          this.refreshError = `${(err as Error)?.name}: ${(err as Error)?.message}`
          // a peer that refuses connections is gone; a slow answer only means a loaded peer
          if (err instanceof PeerUnreachableError) this.refreshFailures++
        },
      )
      .finally(() => {
        this.refreshing = false
      })
  }
}
