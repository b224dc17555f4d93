import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from 'pino'
import { rankByDistance } from '../routing/key.js'
import { MAX_WALK_MS, type PeerRef } from '../routing/types.js'
import type { ChunkPlan } from '../transfer/chunks/plan.js'
import { OriginStripes } from '../transfer/chunks/stripes.js'
import type { FanoutPlan } from '../transfer/swarm-download.js'
import type { BlobLocator } from '../transfer/types.js'
import { PeerUnreachableError } from '../peer/errors.js'
import type { PeerPenalties } from './penalties.js'
import { PeerChunkSource, unknownHoldings } from './peer-source.js'
import type { PeerChunkClient } from './types.js'
import { timeoutSignal } from '../util/abort.js'

/** a fetcher candidate that refused a connection is tried once more after this */
const UNREACHABLE_RETRY_MS = 300

export interface FanoutOptions {
  selfId: string
  /** peers closest to the blob's DHT key, within a deadline */
  closest(digest: string, options: { signal: AbortSignal; timeoutMs: number }): Promise<PeerRef[]>
  client: PeerChunkClient
  penalties: PeerPenalties
  /** origin fetchers per blob */
  fetchers: number
  lookupTimeoutMs: number
  infoTimeoutMs: number
  logger: Logger
  /** the download's signal: sources stop with it */
  signal: AbortSignal
}

/**
 * Chooses a blob's origin fetchers (the DHT query runs while `planned` is worked out; undefined
 * there means no fan-out is needed, and nobody is asked anything): the `fetchers` nodes closest to its DHT key, this node
 * among the candidates, in kad-dht's own metric (so every node that asks the DHT ranks the
 * same nodes first). Fetchers other than this node are asked to start on the blob (`want`) and
 * become chunk sources. Undefined when the DHT knows no peer.
 */
export async function planFanout(
  locator: BlobLocator,
  planned: Promise<ChunkPlan | undefined>,
  opts: FanoutOptions,
): Promise<FanoutPlan | undefined> {
  const digest = locator.digest.value
  const candidates = new Map<string, PeerRef>()
  const started = Date.now()
  // The query runs while the plan is worked out (at least the lookup deadline, at most
  // MAX_WALK_MS), then yields what it found: every node must see the same closest
  // peers, and under load a query cut at the lookup deadline (1 s) left nodes 9-14 of 15
  // candidates, so they chose other fetchers than the rest (origin sent 1.8x the image).
  const enough = new AbortController()
  const query = opts.closest(digest, { signal: AbortSignal.any([opts.signal, enough.signal]), timeoutMs: MAX_WALK_MS }).catch((err: Error) => {
    opts.logger.debug({ digest, err: err.message }, 'closest-peers query failed')
    return []
  })
  const plan = await planned
  const plannedMs = Date.now() - started
  const floor = started + opts.lookupTimeoutMs - Date.now()
  if (plan !== undefined && floor > 0) await sleep(floor, undefined, { ref: false })
  enough.abort()
  const closest = await query
  const queryMs = Date.now() - started
  if (plan === undefined) return undefined
  for (const peer of closest) if (!opts.penalties.isPenalised(peer.id)) candidates.set(peer.id, peer)
  if (candidates.size === 0) {
    opts.logger.debug({ digest, ms: Date.now() - started }, 'no candidate origin fetchers')
    return undefined
  }
  // The closest reachable nodes: a candidate that cannot be dialled at all (a node that died,
  // still in the tables) is passed over for the next at once, instead of being counted on until
  // the download gives it up; every node that tries it finds it dead. Any other failure (a reset
  // on a loaded peer) is no proof: a node that passed over a live fetcher for it chose other
  // fetchers than the rest of the fleet.
  const ranked = rankByDistance(digest, [opts.selfId, ...candidates.keys()])
  const want = `${locator.registry}/${locator.name}`
  const askOnce = (peer: PeerRef) =>
    opts.client
      .info(peer, digest, { signal: timeoutSignal(opts.infoTimeoutMs, opts.signal), want })
      .catch((err: unknown) => (err instanceof PeerUnreachableError && err.refused ? ('unreachable' as const) : undefined))
  const ask = async (id: string): Promise<PeerChunkSource | 'self' | 'unreachable'> => {
    if (id === opts.selfId) return 'self'
    const peer = candidates.get(id) as PeerRef
    const first = await askOnce(peer)
    // a loaded node may turn a dial away now and then (its pending-connection limits): dead is
    // what refuses twice
    const info = first === 'unreachable' ? await sleep(UNREACHABLE_RETRY_MS).then(() => askOnce(peer)) : first
    if (info === 'unreachable') return info
    const fits = info !== undefined && info.size === plan.size && info.chunkSize === plan.chunkSize && info.have.length === plan.count
    return new PeerChunkSource(peer, fits ? info : unknownHoldings(plan), opts.client, digest, opts.signal, want)
  }
  const ranking: string[] = []
  const sources: PeerChunkSource[] = []
  for (let next = 0; ranking.length < opts.fetchers && next < ranked.length; ) {
    const batch = ranked.slice(next, next + opts.fetchers - ranking.length)
    next += batch.length
    const answers = await Promise.all(batch.map(ask))
    answers.forEach((answer, i) => {
      if (answer === 'unreachable') return
      ranking.push(batch[i] as string)
      if (answer !== 'self') sources.push(answer)
    })
  }
  // ms: from the request to the fetchers' answers; plannedMs: the blob's size known; queryMs: the candidates known
  opts.logger.info(
    { digest, fetchers: ranking, self: ranking.includes(opts.selfId), candidates: candidates.size, ms: Date.now() - started, plannedMs, queryMs },
    'origin fetchers chosen',
  )
  return { stripes: new OriginStripes(ranking, opts.selfId), sources }
}
