import type { Logger } from 'pino'
import type { BlobWriter } from '../store/blob-store.js'
import { ChunkBuffers } from './chunks/buffers.js'
import { HotChunks } from './chunks/hot.js'
import { type ChunkPlan, chunkBounds, chunkHash } from './chunks/plan.js'
import { OriginChunkSource } from './chunks/origin-source.js'
import { ChunkScheduler, type ChunkSource, type OriginTurns, RequestSlots, TableMismatchError } from './chunks/scheduler.js'
import { ChunkState } from './chunks/state.js'
import type { OriginStripes } from './chunks/stripes.js'
import type { Download } from './download.js'
import type { BlobLocator, BlobSource } from './types.js'

/**
 * Origin requests a fetcher has in flight, per fan-out download and over all of them
 * (OriginTurns, where the figures of the latter are): origin's link is the limit, and its flows
 * share one queue. With two per fetcher and blob, a 4-node fleet pulling three layers kept 24
 * flows at origin, and for seconds at a time one or two fetchers completed no origin request at
 * all (origin's log) while the others took its whole rate: their uplinks idled, having nothing
 * new to pass on. With one per blob (12 flows), `scripts/bench/fanout --nodes 4 --rounds 3` read
 * p50 1.21x T_min (1.29, 1.21, 1.21) against 1.28x with two. A depth that grew when answers'
 * heads took long next to their bodies (for a far origin) grew on a loaded machine too: to 2-4
 * for 9 of the 12 fetcher downloads of a 16-node round.
 */
export const FANOUT_ORIGIN_INFLIGHT = 1

/** A fetcher that refuses connections this many times in a row is taken for dead… */
const FETCHER_MAX_FAILURES = 3
/** …and so is one that has not answered for this many stall periods (a loaded peer answers late). */
const FETCHER_SILENCE = 4
const WATCHDOG_MS = 500
/**
 * An origin fetcher counts as stalled only once it has not grown for this many of the times
 * chunks take here lately (or p2p.fetcherStall, if longer): in a 16-node fan-out on two cores,
 * chunks took 5-10 s, and fetchers still fetching were given up after 13-18 s without growth.
 */
const STALL_CHUNK_TIMES = 3
/**
 * How often a running download looks for more peers, while it has fewer than ENOUGH_PEERS: a DHT
 * lookup is the costliest thing a node does per blob (profiled: kad-dht and its peer store took
 * half of a node's CPU when every download looked every 1.5 s, a sixth to a quarter after this).
 */
const REDISCOVER_MS = 5_000
const ENOUGH_PEERS = 8
/** …and while it has a few peers already (their answers name more: peer exchange) */
const REDISCOVER_WITH_PEERS_MS = 15_000
/** A swarm download that takes no chunk for this long leaves the peers: origin fetches the rest. */
const NO_PROGRESS_MS = 60_000
/**
 * Peers one download takes chunks from at most (each is asked for its holdings as they grow:
 * one long-poll answer per chunk it gains). In a 16-node fan-out (`scripts/bench/fanout`, two
 * runs each), 16 sources made 9.5-9.9k holdings answers per round, 8 made 5.2-5.4k and took a tenth
 * less CPU and time; 5 made 3.5k but took longer again (fewer holders to choose from).
 */
const MAX_SOURCES = 8
/**
 * One chunk from a peer: a fetcher's uplink is shared by every node at the start of a fan-out,
 * so a chunk may take long (and three timeouts in a row drop the peer for the blob); a
 * connection that stops moving is cut sooner (the data client's idle timeout), and a slow chunk
 * is hedged to another holder.
 */
const PEER_CHUNK_TIMEOUT_MS = 90_000
/** One chunk from origin: origin's link may be shared by a whole fleet. */
const ORIGIN_CHUNK_TIMEOUT_MS = 120_000
/**
 * Bytes of chunks that arrived ahead of the in-order prefix kept in memory, so that they are
 * hashed into the blob's digest without reading them back from the file. Past this, such chunks
 * are read back (slower, bounded memory).
 */
export const MAX_HELD_BYTES = 64 * 1024 * 1024
/**
 * Bytes of the last chunks written that a download keeps in memory for peers and for the
 * runtime's stream (HotChunks). With 8 MiB, 86% of the chunk reads of a 16-node fan-out were
 * served from memory (chunks held ahead of the prefix included); with 16 MiB, 95%.
 */
const HOT_BYTES = 8 * 1024 * 1024

/** how many chunks of `chunkSize` a download keeps after writing them (at least 2) */
export function hotChunks(chunkSize: number): number {
  return Math.max(2, Math.floor(HOT_BYTES / chunkSize))
}

/**
 * Why an origin fetcher should be given up, if it should: it refuses connections, has been
 * silent for long (a loaded peer answers late, so silence alone takes long), or answers but its
 * origin download has not moved while chunks of its share are wanted and nobody has them.
 */
function fetcherTrouble(src: PeerSource, stallMs: number, waitedOn: () => boolean): string | undefined {
  if (src.refreshFailures >= FETCHER_MAX_FAILURES) return 'refuses connections'
  if (Date.now() - src.lastAnswer > FETCHER_SILENCE * stallMs) return 'silent'
  // one that has not begun yet gets twice the time (it is choosing its own fetchers)
  const grace = src.started ? stallMs : 2 * stallMs
  if (src.lastAnswer - src.lastGrowth > grace && waitedOn()) return 'stalled'
  return undefined
}

/** A chunk source that offers only the chunks `allowed` admits (checked anew at every pick). */
function gated(source: ChunkSource, allowed: (index: number) => boolean): ChunkSource {
  return {
    id: source.id,
    kind: source.kind,
    has: (index) => allowed(index) && source.has(index),
    fetch: (index, signal, into, onBytes) => source.fetch(index, signal, into, onBytes),
  }
}

/** Peers that hold a blob, as found by the swarm. */
export interface SwarmPlan {
  readonly plan: ChunkPlan
  /** chunk hashes agreed by the peers that answered; undefined where none knows it yet */
  readonly table: readonly (string | undefined)[]
  readonly sources: readonly PeerSource[]
  /** who fetches which chunks from origin, when the fleet shares that work (see OriginStripes) */
  readonly stripes?: OriginStripes
  /** with stripes: each candidate fetcher that answered, as it answers (a source at once) */
  readonly answered?: Answered
  /** with stripes: resolves once the asks that settle the fetchers are over (`stripes` re-ranked by then; every fetcher that answered came through `answered`) */
  readonly settled?: Promise<unknown>
}

/** A peer as a chunk source, with the hashes it claims for the chunks it holds. */
export interface PeerSource extends ChunkSource {
  hashOf(index: number): string | undefined
  /** it holds every chunk */
  readonly complete: boolean
  /** when its holdings or its download's received bytes last grew (or it was first asked), ms since epoch */
  readonly lastGrowth: number
  /** when it last answered about its holdings or delivered a chunk, ms since epoch */
  readonly lastAnswer: number
  /** it has begun on the blob (a fetcher asked to start may take a moment) */
  readonly started: boolean
  /** consecutive attempts to learn its holdings that found it unreachable (refused, reset) */
  readonly refreshFailures: number
  /** why the last attempt to learn its holdings failed, if it did (for logs) */
  readonly refreshError?: string
  /** asks it for its holdings again (rate-limited), even when the scheduler stopped using it */
  poll(): void
  /** other nodes fetching the blob, as this peer named them (peer exchange) */
  readonly exchanged: readonly string[]
}

/** The blob's origin fetchers: the ranking to begin on, and the fetchers that are peers as chunk sources once they answered (`stripes` re-ranked by then). */
export interface FanoutPlan {
  readonly stripes: OriginStripes
  /** each candidate fetcher that answered, as it answers */
  readonly answered: Answered
  readonly settled: Promise<readonly PeerSource[]>
}

/** Sources as they come: the ones so far are handed to a follower when it begins, the later ones as they come. */
export class Answered {
  private readonly sources: PeerSource[] = []
  private follower: ((source: PeerSource) => void) | undefined

  add(source: PeerSource): void {
    this.sources.push(source)
    this.follower?.(source)
  }

  follow(follower: (source: PeerSource) => void): void {
    this.follower = follower
    for (const source of this.sources) follower(source)
  }
}

/** What the transfer layer asks of the swarm (implemented by the composition root). */
export interface SwarmHooks {
  readonly chunkSize: number
  /** chunk requests to peers in flight at once, over all of the node's downloads */
  readonly maxRequests: number
  /** the node has peers: worth asking the swarm at all */
  joined(): boolean
  /** peers holding the blob (other than `known` ones), found within a short deadline; undefined when there are none */
  discover(digest: string, signal: AbortSignal, known?: ReadonlySet<string>): Promise<SwarmPlan | undefined>
  /**
   * The blob's origin fetchers (the nodes closest to its key), each asked to fetch its share;
   * undefined when there are no peers to share with, or when `plan` resolves undefined (no need:
   * the lookup for them starts at once, the asking only once the plan is known). Resolves once
   * they are ranked; the asking goes on (`settled`).
   */
  fanout(locator: BlobLocator, plan: Promise<ChunkPlan | undefined>, signal: AbortSignal): Promise<FanoutPlan | undefined>
  /** an origin fetcher whose holdings do not grow for this long is taken over */
  readonly fetcherStallMs: number
  /** a peer named by another (peer exchange) as a source, holding nothing until it answers; undefined when it is not to be used */
  exchangedPeer(digest: string, peerId: string, plan: ChunkPlan, signal: AbortSignal): PeerSource | undefined
  /**
   * this node holds (part of) the blob now: announce it; `spread`: a fan-out's commit, which the
   * whole fleet reaches at about the same time (the announce may wait a while)
   */
  announce(digest: string, options?: { spread: boolean }): void
  /** a peer sent bytes that failed verification */
  penalise(peerId: string): void
  /** the blob is complete and verified; its chunk table, for serving peers */
  completed(digest: string, table: readonly string[]): void
}

export interface SwarmDownloadOptions {
  locator: BlobLocator
  plan: SwarmPlan
  writer: BlobWriter
  download: Download
  origin: BlobSource
  swarm: SwarmHooks
  signal: AbortSignal
  logger: Logger
  /** bytes accepted from a source kind ('peer', 'origin'), with the peer's id */
  onFetched?(source: string, bytes: number, peer?: string): void
  /** chunk buffers, reused across downloads (default: fresh ones) */
  buffers?: ChunkBuffers
  /** the node's request slots, shared across downloads (default: this download's own, `swarm.maxRequests`) */
  slots?: RequestSlots
  /** the node's origin turns, shared by its fan-out downloads (default: none; FANOUT_ORIGIN_INFLIGHT bounds this download alone) */
  originTurns?: OriginTurns
  /** leave the peers after this long without a chunk (default NO_PROGRESS_MS) */
  noProgressMs?: number
}

/**
 * Fetches a blob's chunks from the peers that hold them (and from origin where none does, or
 * where peers are too slow), writes them into the partial file as they come, extends the
 * contiguous prefix that waiting clients stream from, and commits once the whole blob matched
 * its digest.
 *
 * Trust: a chunk from a peer must hash to what that peer claims and agree with the table other
 * peers gave; that catches a bad peer early. It proves nothing about the blob: only the
 * commit's whole-blob digest check does, and nothing is committed, announced as complete or
 * served whole before it passed (see ChunkTable). On a mismatch every peer that contributed is
 * penalised and the download fails; the next request goes to origin without them.
 */
export async function runSwarmDownload(opts: SwarmDownloadOptions): Promise<void> {
  const { locator, plan, writer, download, swarm, signal } = opts
  const digest = locator.digest.value
  const state = new ChunkState(plan.plan, plan.table)
  download.chunks = state
  const table = [...plan.table]
  const contributors = new Set<string>()
  const pending = new Set<number>()
  let announced = false

  const verify = (index: number, bytes: Uint8Array, source: ChunkSource): boolean => {
    const { start, end } = chunkBounds(plan.plan, index)
    if (bytes.byteLength !== end - start) return false
    const hash = chunkHash(bytes)
    if (source.kind === 'origin') {
      // origin is the source of truth: a disagreeing table is false
      if (table[index] !== undefined && table[index] !== hash) return false
    } else {
      const claim = (source as PeerSource).hashOf(index)
      if (claim !== hash || (table[index] !== undefined && table[index] !== hash)) return false
    }
    table[index] = hash
    return true
  }

  // Chunks ahead of the prefix: written at once (peers and readers may take them), hashed into
  // the digest when the prefix reaches them, from memory (`hot.hold`) or, past MAX_HELD_BYTES, from the file.
  const buffers = opts.buffers ?? new ChunkBuffers(plan.plan.chunkSize, 0)
  const hot = new HotChunks(plan.plan.chunkSize, hotChunks(plan.plan.chunkSize), MAX_HELD_BYTES, (b) => buffers.give(b))
  download.memory = hot
  /** when the last chunk was accepted (or the download began), for the no-progress safety net */
  let lastChunk = Date.now()
  const accept = async (index: number, bytes: Uint8Array): Promise<void> => {
    const { start } = chunkBounds(plan.plan, index)
    if (start === writer.written) {
      await writer.write(bytes)
      hot.keep(index, bytes)
      for (let next = index + 1; pending.has(next); next++) {
        const kept = hot.unhold(next)
        if (kept !== undefined) {
          writer.advanceOver(kept)
          hot.keep(next, kept)
        } else {
          const b = chunkBounds(plan.plan, next)
          await writer.advance(b.end - b.start)
        }
        pending.delete(next)
      }
    } else {
      await writer.writeAt(start, bytes)
      pending.add(index)
      if (!hot.hold(index, bytes)) buffers.give(bytes)
    }
    state.mark(index, table[index] as string)
    lastChunk = Date.now()
    download.progress()
    // in a fan-out the origin fetchers name every node fetching the blob to the others (peer
    // exchange), so nobody needs a provider record to find this node before it completes: 64
    // announces at the first chunk were 512 of a 16-node round's 862 kad-dht requests (fanout-logs),
    // all at its busy start
    if (!announced && plan.stripes === undefined) {
      announced = true
      swarm.announce(digest)
    }
  }

  const sources = new Map<string, PeerSource>(plan.sources.map((p) => [p.id, p]))
  /** in a fan-out: chunks this node took from origin out of other fetchers' shares (the log line at the end) */
  let stolen = 0
  const stripes = plan.stripes
  const originSource = new OriginChunkSource(opts.origin, locator, plan.plan, (n) => {
    download.received += n
  })
  const scheduler = new ChunkScheduler({
    plan: plan.plan,
    verify,
    accept,
    peers: [...sources.values()],
    // with stripes, origin takes only this node's share (and what fetchers that died leave)
    origin: stripes === undefined ? originSource : gated(originSource, (i) => stripes.mine(i)),
    maxInflightOrigin: stripes === undefined ? undefined : FANOUT_ORIGIN_INFLIGHT,
    originTurns: stripes === undefined ? undefined : opts.originTurns,
    originPick: stripes === undefined ? undefined : (free) => stripes.next(plan.plan.count, free),
    buffers,
    slots: opts.slots ?? new RequestSlots(swarm.maxRequests),
    requestTimeoutMs: PEER_CHUNK_TIMEOUT_MS,
    originRequestTimeoutMs: ORIGIN_CHUNK_TIMEOUT_MS,
    mayWait: () => stripes !== undefined && stripes.others().length > 0,
    onBadPeer: (peer, index) => {
      opts.logger.warn({ peer, digest, chunk: index }, 'peer sent a chunk that failed verification: penalised')
      swarm.penalise(peer)
    },
    onOriginIdle: (index) => {
      opts.logger.warn({ digest, chunk: index }, 'origin request silent: its origin turn goes to the next download')
    },
    onFailingPeer: (peer, err) => {
      opts.logger.debug({ peer, digest, err: (err as Error)?.message }, 'peer keeps failing: no longer a source for this blob')
    },
    onChunk: (index, source, bytes) => {
      if (source.kind === 'peer') contributors.add(source.id)
      else if (stripes !== undefined && !stripes.mine(index)) stolen++
      opts.onFetched?.(source.kind, bytes, source.kind === 'peer' ? source.id : undefined)
    },
  })

  // The candidate fetchers as sources as soon as each answers (a node that is no fetcher waited
  // for every ask, the near rounds' too, before it took a byte). No fetcher is judged before the
  // asks are over: a fetcher asked a moment ago has nothing to show.
  plan.answered?.follow((src) => {
    if (state.complete || signal.aborted || sources.has(src.id)) return
    sources.set(src.id, src)
    scheduler.addPeer(src)
  })
  let settled = plan.settled === undefined
  plan.settled?.then(() => {
    settled = true
  })
  // Fetchers that died or stalled: their share of origin's chunks falls to the others.
  const readmitted = new Set<string>()
  const watchdog = (): void => {
    if (stripes === undefined || !settled) return
    // on a loaded fleet every chunk takes long: a fetcher is stalled only past a few chunk times
    const stallMs = Math.max(swarm.fetcherStallMs, STALL_CHUNK_TIMES * scheduler.medianChunkMs())
    for (const id of stripes.others()) {
      const src = sources.get(id)
      // a fetcher that holds the whole blob but that this download no longer takes chunks from
      // (it kept failing, on a congested link): taken back once; dropped again, its share of
      // origin's chunks falls to the others, or chunks only it holds would be waited for
      // forever. (An incomplete one keeps its share: the others may still get its chunks from
      // the nodes that did; moving its share to origin on every node that gave up on it sent
      // origin 3-3.5× the image.)
      if (src?.complete && !scheduler.uses(id)) {
        if (!readmitted.has(id) && scheduler.readmit(src)) {
          readmitted.add(id)
          continue
        }
        stripes.drop(id)
        opts.logger.warn({ digest, fetcher: id, why: 'dropped as a source' }, 'origin fetcher gone or stalled: its chunks fall to the next fetchers')
        continue
      }
      // a fetcher that holds the whole blob has done its share (and is no longer asked about it)
      if (src?.complete) continue
      src?.poll()
      const waitedOn = (): boolean => {
        for (let i = 0; i < plan.plan.count; i++) {
          if (state.have[i] || stripes.owner(i) !== id) continue
          if (![...sources.values()].some((p) => p.has(i))) return true
        }
        return false
      }
      const why = src === undefined ? 'unknown' : fetcherTrouble(src, stallMs, waitedOn)
      if (why !== undefined) {
        stripes.drop(id)
        const seen = src === undefined ? {} : { answeredAgo: Date.now() - src.lastAnswer, grewAgo: Date.now() - src.lastGrowth, lastError: src.refreshError }
        opts.logger.warn({ digest, fetcher: id, why, ...seen }, 'origin fetcher gone or stalled: its chunks fall to the next fetchers')
      }
    }
  }
  // Peers that started on the blob after this download did (they announce their first chunk).
  let looking = false
  let lookups = 0
  let lastLookup = Date.now()
  const rediscover = (): void => {
    if (looking || !scheduler.takesPeers || state.complete || sources.size >= ENOUGH_PEERS) return
    // with peers to exchange names with, peer exchange finds the others: a lookup only now and then
    if (sources.size >= 2 && Date.now() - lastLookup < REDISCOVER_WITH_PEERS_MS) return
    looking = true
    lookups++
    lastLookup = Date.now()
    swarm
      .discover(digest, signal, new Set(sources.keys()))
      .then((found) => {
        if (found === undefined || found.plan.size !== plan.plan.size || found.plan.chunkSize !== plan.plan.chunkSize) return
        for (const src of found.sources) {
          if (sources.has(src.id)) continue
          sources.set(src.id, src)
          scheduler.addPeer(src)
        }
      })
      .catch(() => {})
      .finally(() => {
        looking = false
      })
  }
  // Peers that the sources named as fetching the blob too (peer exchange): no DHT lookup needed.
  const exchange = (): void => {
    if (!scheduler.takesPeers || state.complete) return
    for (const src of [...sources.values()]) {
      for (const id of src.exchanged) {
        if (sources.size >= MAX_SOURCES) return
        if (sources.has(id)) continue
        const peer = swarm.exchangedPeer(digest, id, plan.plan, signal)
        if (peer === undefined) continue
        sources.set(id, peer)
        scheduler.addPeer(peer)
      }
    }
  }
  // The safety net: a download that takes no chunk for this long leaves its peers, and origin
  // fetches every chunk still missing (the chunks held stay; every other fetcher is given up, so
  // all of them are this node's share): a pull must never hang.
  const noProgressMs = opts.noProgressMs ?? NO_PROGRESS_MS
  const checkProgress = (): void => {
    if (!scheduler.takesPeers || state.complete || Date.now() - lastChunk <= noProgressMs) return
    opts.logger.warn(
      { digest, seconds: noProgressMs / 1000, sources: sources.size, ...scheduler.describe() },
      'no chunk came from the swarm for long: origin fetches the rest',
    )
    for (const id of stripes?.others() ?? []) stripes?.drop(id)
    scheduler.dropPeers()
  }
  const timers = [
    setInterval(() => {
      watchdog()
      exchange()
      checkProgress()
    }, WATCHDOG_MS),
    setInterval(rediscover, REDISCOVER_MS),
  ]
  try {
    const result = await scheduler.run(signal)
    await writer.commit()
    if (!announced) swarm.announce(digest, { spread: plan.stripes !== undefined })
    opts.logger.info(
      {
        digest,
        size: plan.plan.size,
        bySource: Object.fromEntries(result.bySource),
        wasted: result.wasted,
        copies: { hedged: result.hedged, endGame: result.endGame, lost: result.lost },
        sources: sources.size,
        lookups,
        reads: download.reads,
        heldPeakBytes: hot.heldPeakBytes,
        ...(stripes === undefined ? {} : { stolen }),
      },
      'blob fetched through the swarm',
    )
  } catch (err) {
    if ((err as Error).name === 'DigestMismatchError' || err instanceof TableMismatchError) {
      opts.logger.warn({ digest, peers: [...contributors], err: (err as Error).message }, 'blob from peers failed its digest: peers penalised')
      for (const peer of contributors) swarm.penalise(peer)
    }
    throw err
  } finally {
    for (const t of timers) clearInterval(t)
    download.memory = undefined
    hot.clear()
  }
  swarm.completed(digest, table as string[])
}
