import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from 'pino'
import { rankByDistance } from '../routing/key.js'
import { MAX_WALK_MS, type PeerRef } from '../routing/types.js'
import type { ChunkPlan } from '../transfer/chunks/plan.js'
import { OriginStripes } from '../transfer/chunks/stripes.js'
import { Answered, type FanoutPlan } from '../transfer/swarm-download.js'
import type { BlobLocator } from '../transfer/types.js'
import { PeerUnreachableError } from '../peer/errors.js'
import type { PeerPenalties } from './penalties.js'
import { PeerChunkSource, unknownHoldings } from './peer-source.js'
import type { PeerChunkClient } from './types.js'
import { timeoutSignal } from '../util/abort.js'

/** a fetcher candidate that refused a connection is tried once more after this */
const UNREACHABLE_RETRY_MS = 300
/** rounds of re-ranking with the nodes the fetchers asked name near the key (bounded: it always ends) */
const NEAR_ROUNDS = 2

/** what a fetcher candidate answered: a source (and the nodes it knows near the key), this node, or dead */
type Answer = { source: PeerChunkSource; near: readonly string[] } | 'self' | 'unreachable'

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
 *
 * Resolves as soon as the query's ranking is known, with `stripes` on that ranking; the asks go
 * on meanwhile: `answered` hands over each candidate that answers as a source, as it answers,
 * and `settled` resolves once they are over, with the fetchers as sources and the stripes
 * re-ranked by what the asks found.
 *
 * Under load a query finds part of the fleet only (10-15 of 15 peers in a 16-node bench), and a
 * node that missed the nodes nearest the key chose other fetchers than the rest, or itself, and
 * fetched its share from origin once more (origin sent 1.2-1.6x the image). So the fetchers
 * asked name the nodes they know nearest the key (`near`: they are near it, their tables know
 * that neighbourhood best); those join the candidates, and nearer ones not asked yet are asked
 * in turn, for NEAR_ROUNDS rounds at most.
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
  // candidates, so they chose other fetchers than the rest (origin sent 1.8x the image). A walk
  // that ended on its own before the deadline found all it could: it is not waited out (in a
  // 4-node fan-out with CPU to spare, a blob's fetchers were then chosen 0.25-0.68 s after its
  // request, median per round, where they were at 1.01-1.02 s).
  const enough = new AbortController()
  const query = opts.closest(digest, { signal: AbortSignal.any([opts.signal, enough.signal]), timeoutMs: MAX_WALK_MS }).catch((err: Error) => {
    opts.logger.debug({ digest, err: err.message }, 'closest-peers query failed')
    return []
  })
  const plan = await planned
  const plannedMs = Date.now() - started
  const floor = started + opts.lookupTimeoutMs - Date.now()
  if (plan !== undefined && floor > 0) await Promise.race([sleep(floor, undefined, { ref: false }), query])
  enough.abort()
  const closest = await query
  const queryMs = Date.now() - started
  if (plan === undefined) return undefined
  for (const peer of closest) if (!opts.penalties.isPenalised(peer.id)) candidates.set(peer.id, peer)
  if (candidates.size === 0) {
    opts.logger.debug({ digest, ms: Date.now() - started }, 'no candidate origin fetchers')
    return undefined
  }
  // The download begins on the query's ranking at once: this node, if it ranks among the
  // fetchers, fetches its share from origin while the candidates are asked, and the ranking the
  // asks settle replaces it (`settle`). Waiting for the answers first put every fetcher's first
  // origin request behind a round of asks that took a median 0.8-2.0 s per round of a loaded
  // 16-node fan-out, with origin's link idle meanwhile.
  const ranked = rankByDistance(digest, [opts.selfId, ...candidates.keys()])
  const begun = ranked.slice(0, opts.fetchers)
  const stripes = new OriginStripes(begun, opts.selfId)
  const answered = new Answered()
  /**
   * Asks the first ranked candidates to start on the blob (`want`), passing over the dead ones
   * and adopting the nodes their answers name nearer the key; re-ranks `stripes` by the outcome
   * and returns the fetchers other than this node as chunk sources.
   *
   * The closest reachable nodes: a candidate that cannot be dialled at all (a node that died,
   * still in the tables) is passed over for the next at once, instead of being counted on until
   * the download gives it up; every node that tries it finds it dead. Any other failure (a reset
   * on a loaded peer) is no proof: a node that passed over a live fetcher for it chose other
   * fetchers than the rest of the fleet.
   */
  const settle = async (): Promise<PeerChunkSource[]> => {
    const want = `${locator.registry}/${locator.name}`
    let askedAgain = 0
    /** some candidate has named the nodes it knows near the key */
    let heardNear = false
    const askOnce = (peer: PeerRef) =>
      opts.client
        .info(peer, digest, { signal: timeoutSignal(opts.infoTimeoutMs, opts.signal), want })
        .then((info) => {
          if (info?.near !== undefined && info.near.length > 0) heardNear = true
          return info
        })
        .catch((err: unknown) => (err instanceof PeerUnreachableError && err.refused ? ('unreachable' as const) : ('failed' as const)))
    const ask = async (id: string): Promise<Answer> => {
      if (id === opts.selfId) return 'self'
      const peer = candidates.get(id) as PeerRef
      let answer = await askOnce(peer)
      if (answer === 'unreachable') {
        // a loaded node may turn a dial away now and then (its pending-connection limits): dead
        // is what refuses twice
        askedAgain++
        answer = await sleep(UNREACHABLE_RETRY_MS).then(() => askOnce(peer))
        if (answer === 'unreachable') return answer
      } else if (answer === 'failed' && !heardNear) {
        // An ask that timed out or was reset is made once more while no candidate has named the
        // nodes near the key: without those a node keeps its own query's ranking (in a 16-node
        // fan-out with containerd on every node, one node's three asks all timed out at the
        // loaded round start; its query had missed two of the four nodes nearest a layer's key,
        // it chose other fetchers for it than the rest, and origin sent 1.14x the image). Once
        // another has named them, a silent candidate (a dead host's packets dropped) is not
        // waited for twice.
        askedAgain++
        answer = await askOnce(peer)
      }
      const info = typeof answer === 'string' ? undefined : answer
      // (a node that has not begun on the blob answers size 0: holdings that do not fit)
      const fits = info !== undefined && info.size === plan.size && info.chunkSize === plan.chunkSize && info.have.length === plan.count
      const source = new PeerChunkSource(peer, fits ? info : unknownHoldings(plan), opts.client, digest, opts.signal, want)
      answered.add(source)
      return { source, near: info?.near ?? [] }
    }
    /** every candidate asked, and its answer: each is asked once */
    const answers = new Map<string, Answer>()
    /** the first `fetchers` of `ranked` that are not dead, asking those not asked yet */
    const pick = async (ranked: readonly string[]): Promise<string[]> => {
      const ranking: string[] = []
      for (let next = 0; ranking.length < opts.fetchers && next < ranked.length; ) {
        const batch = ranked.slice(next, next + opts.fetchers - ranking.length)
        next += batch.length
        const fresh = batch.filter((id) => !answers.has(id))
        const got = await Promise.all(fresh.map(ask))
        for (const [i, id] of fresh.entries()) answers.set(id, got[i] as Answer)
        for (const id of batch) if (answers.get(id) !== 'unreachable') ranking.push(id)
      }
      return ranking
    }
    /** the nodes the fetchers asked name near the key that were no candidates: how many joined */
    const adoptNear = (): number => {
      let added = 0
      for (const answer of answers.values()) {
        if (typeof answer === 'string') continue
        for (const id of answer.near) {
          if (id === opts.selfId || candidates.has(id) || opts.penalties.isPenalised(id)) continue
          // no address: the data client finds one through libp2p, as for an exchanged peer
          candidates.set(id, { id, addrs: [] })
          added++
        }
      }
      return added
    }
    const found = candidates.size
    let ranking = await pick(ranked)
    let near = 0
    for (let round = 0; round < NEAR_ROUNDS && !opts.signal.aborted; round++) {
      const added = adoptNear()
      if (added === 0) break
      near += added
      ranking = await pick(rankByDistance(digest, [opts.selfId, ...candidates.keys()]))
    }
    const sources: PeerChunkSource[] = []
    for (const id of ranking) {
      const answer = answers.get(id)
      if (typeof answer === 'object') sources.push(answer.source)
    }
    // candidates: found by the query; near: added from the fetchers' answers; asked: peers asked;
    // askedAgain: asks that failed (refused; timed out or reset before any candidate named the
    // nodes near the key) and were made again;
    // ms: from the request to the fetchers' answers; plannedMs: the blob's size known; queryMs: the
    // candidates known (the download began then); reranked: the asks changed the fetchers
    opts.logger.info(
      {
        digest,
        fetchers: ranking,
        self: ranking.includes(opts.selfId),
        candidates: found,
        near,
        asked: answers.size - (answers.has(opts.selfId) ? 1 : 0),
        askedAgain,
        ms: Date.now() - started,
        plannedMs,
        queryMs,
        reranked: ranking.join() !== begun.join(),
      },
      'origin fetchers chosen',
    )
    stripes.rank(ranking)
    return sources
  }
  const settled = settle().catch((err: Error) => {
    opts.logger.warn({ digest, err: err.message }, 'asking the origin fetchers failed: the first ranking stays')
    return []
  })
  return { stripes, answered, settled }
}
