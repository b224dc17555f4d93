/**
 * ContentRouter over kad-dht.
 *
 * - advertise: `provide(cid)` under a deadline (30 s). One provide per digest
 *   at a time (single flight, owned by the router, not by the first caller:
 *   a caller that aborts stops waiting, the shared provide runs on under the
 *   router's deadline). Every advertised digest joins a re-announce schedule
 *   (every 10 min by default); digests whose last attempt stored nothing are
 *   re-announced as soon as the routing table gains a peer. Right after a walk
 *   or a closest-peers query for the digest, the record goes straight to the
 *   closest peers those found, without a walk of its own (see NEAR_KNOWN_MS).
 * - withdraw: leaves the schedule and drops our own record from the local
 *   provider store (so kad-dht's own reprovider leaves it alone). Records
 *   already stored on other peers stay until they expire there.
 * - lookup: `findProviders(cid)` under a short deadline (2 s), self excluded,
 *   de-duplicated, peers without addresses skipped, stopped after `limit`;
 *   returns at once when the routing table is empty (kad-dht would otherwise
 *   wait for a first peer until the deadline).
 * - closest: the peers closest to a blob's key (origin-fetcher candidates),
 *   from the same walk as a lookup running for that blob (see SharedWalk).
 * - knownNearest: the same neighbourhood from what the node knows already (its
 *   table, a recent walk or query, its connected DHT peers), without a walk:
 *   what an origin fetcher tells the nodes that ask it.
 *
 * The router talks to kad-dht through `DhtBackend`, a narrow view that
 * `src/p2p/node.ts` builds over the libp2p service.
 */
import { setMaxListeners } from 'node:events'
import type { QueryEvent } from '@libp2p/kad-dht'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import { digestToCid, rankByDistance } from './key.js'
import { SharedWalk, transportAddrs } from './walk.js'
import {
  AdvertiseFailedError,
  type AdvertiseOptions,
  AdvertiseTimeoutError,
  type ContentRouter,
  DEFAULT_LOOKUP_LIMIT,
  LookupFailedError,
  type LookupOptions,
  MAX_WALK_MS,
  NoPeersError,
  type PeerRef,
  RouterStoppedError
} from './types.js'

export const DEFAULT_ADVERTISE_TIMEOUT_MS = 30_000
export const DEFAULT_LOOKUP_TIMEOUT_MS = 2_000
export const DEFAULT_REANNOUNCE_INTERVAL_MS = 10 * 60_000
export const DEFAULT_REANNOUNCE_CONCURRENCY = 4
/** closest peers taken from the local routing table as origin-fetcher candidates */
const LOCAL_CLOSEST = 20
/** wait this long after the routing table gains a peer before announcing pending digests */
const PENDING_DEBOUNCE_MS = 1_000
/**
 * An announce within this long of a providers walk for the same blob stores the record on the
 * closest of the peers known to be near its key, instead of walking again as kad-dht's `provide`
 * does: in a 16-node fan-out the announces' own walks were 43% of the DHT requests (628
 * FIND_NODE of 1,462), right after the providers walks had gone the same way. Known to be near:
 * what a walk that ran to its end heard of, or the candidates a closest-peers query returned
 * (what it heard, the local table's closest, the connected DHT peers), from which the blob's
 * origin fetchers are chosen: this trusts them no further than that choice does.
 *
 * As long as the default re-announce interval: a fan-out's announce comes after the whole
 * download and a random delay of up to `p2p.announceSpread` (60 s), so with a window of 60 s
 * 32 of the 81 announces of a two-round 16-node run walked again (256 FIND_NODE requests in
 * each round, a fifth of the first round's kad-dht requests; `fanout-logs.js`), and for a blob
 * that takes minutes every announce would. A cluster's membership moves little in ten minutes;
 * re-announces walk unless a walk for the blob ran within the window.
 */
const NEAR_KNOWN_MS = DEFAULT_REANNOUNCE_INTERVAL_MS
/** digests whose near peers are remembered at most (the oldest are forgotten first) */
const NEAR_KNOWN_DIGESTS = 256

/** The slice of kad-dht the router needs. */
export interface DhtBackend {
  /** our own peer id string */
  readonly selfId: string
  routingTableSize(): number
  /** call `listener` whenever a peer joins the routing table; returns an unsubscribe function */
  onPeerAdded(listener: () => void): () => void
  provide(cid: CID, options: { signal: AbortSignal }): AsyncIterable<QueryEvent>
  findProviders(cid: CID, options: { signal: AbortSignal }): AsyncIterable<QueryEvent>
  /** peer ids of the local routing table closest to the CID's DHT key (no network) */
  localClosest(cid: CID, count: number): string[]
  /** connected peers that speak the DHT protocol (in a small swarm, every member) */
  connectedPeers(): Promise<string[]>
  /** multiaddrs the peer store knows for a peer (kad-dht's final answers carry none) */
  addressesOf(peerId: string): Promise<string[]>
  /** forget our own provider record locally (kad-dht `cancelReprovide`) */
  cancelReprovide(cid: CID): Promise<void>
  /**
   * Stores our provider record locally and on these peers, without walking to them first (they
   * are the closest a providers walk just found); resolves to how many peers took it. Absent
   * when the kad-dht at hand does not allow it: `provide` then walks.
   */
  storeRecord?(cid: CID, peerIds: readonly string[], options: { signal: AbortSignal }): Promise<number>
}

export interface DhtContentRouterOptions {
  logger: Logger
  /** deadline of one provide, ms (default 30 000) */
  advertiseTimeoutMs?: number
  /** lookup deadline when the caller gives none, ms (default 2 000) */
  lookupTimeoutMs?: number
  /** re-announce every advertised digest this often, ms (default 10 min) */
  reannounceIntervalMs?: number
  /** parallel provides during a re-announce pass (default 4) */
  reannounceConcurrency?: number
  /** peers a provider record is stored on: kad-dht's K (default 20) */
  recordPeers?: number
}

interface ScheduleEntry {
  cid: CID
  /** time the record was last stored on at least one peer; undefined while pending */
  storedAt: number | undefined
}

export class DhtContentRouter implements ContentRouter {
  private readonly backend: DhtBackend
  private readonly log: Logger
  private readonly advertiseTimeoutMs: number
  private readonly lookupTimeoutMs: number
  private readonly reannounceIntervalMs: number
  private readonly reannounceConcurrency: number
  private readonly schedule = new Map<string, ScheduleEntry>()
  private readonly inflight = new Map<string, Promise<void>>()
  /** providers walks running, by digest */
  private readonly walks = new Map<string, SharedWalk>()
  /** peers known to be near a digest's key lately (see NEAR_KNOWN_MS), and since when */
  private readonly nearKey = new Map<string, { at: number; peers: string[] }>()
  private readonly recordPeers: number
  private readonly shutdown = new AbortController()
  private readonly unsubscribe: () => void
  private passTimer: NodeJS.Timeout | undefined
  private pendingTimer: NodeJS.Timeout | undefined
  private passRunning: Promise<void> | undefined

  constructor(backend: DhtBackend, options: DhtContentRouterOptions) {
    this.backend = backend
    this.log = options.logger
    this.advertiseTimeoutMs = options.advertiseTimeoutMs ?? DEFAULT_ADVERTISE_TIMEOUT_MS
    this.lookupTimeoutMs = options.lookupTimeoutMs ?? DEFAULT_LOOKUP_TIMEOUT_MS
    this.reannounceIntervalMs = options.reannounceIntervalMs ?? DEFAULT_REANNOUNCE_INTERVAL_MS
    this.reannounceConcurrency = Math.max(1, options.reannounceConcurrency ?? DEFAULT_REANNOUNCE_CONCURRENCY)
    this.recordPeers = Math.max(1, options.recordPeers ?? 20)
    // kad-dht adds one abort listener per peer it contacts to the signal we pass
    setMaxListeners(Number.POSITIVE_INFINITY, this.shutdown.signal)
    this.unsubscribe = backend.onPeerAdded(() => this.onPeerAdded())
    this.passTimer = setTimeout(() => this.intervalPass(), this.reannounceIntervalMs)
  }

  ready(): boolean {
    return !this.shutdown.signal.aborted && this.backend.routingTableSize() > 0
  }

  async advertise(digest: string, options: AdvertiseOptions = {}): Promise<void> {
    const cid = digestToCid(digest)
    options.signal?.throwIfAborted()
    if (this.shutdown.signal.aborted) throw new RouterStoppedError()
    if (!this.schedule.has(digest)) this.schedule.set(digest, { cid, storedAt: undefined })
    await raceSignal(this.provideShared(digest), options.signal)
  }

  /**
   * Puts digests on the announce schedule without announcing them now (what a node holds at
   * start): a pass announces them, a few at a time, as soon as the routing table has peers.
   */
  enqueue(digests: Iterable<string>): void {
    for (const digest of digests) {
      if (!this.schedule.has(digest)) this.schedule.set(digest, { cid: digestToCid(digest), storedAt: undefined })
    }
    if (this.ready()) this.onPeerAdded()
  }

  async withdraw(digest: string): Promise<void> {
    const entry = this.schedule.get(digest)
    if (entry === undefined) return
    this.schedule.delete(digest)
    await this.forgetLocalRecord(digest, entry.cid)
  }

  async *lookup(digest: string, options: LookupOptions = {}): AsyncIterable<PeerRef> {
    const limit = options.limit ?? DEFAULT_LOOKUP_LIMIT
    if (limit <= 0 || options.signal?.aborted === true || !this.ready()) return
    const deadline = withDeadline(options.timeoutMs ?? this.lookupTimeoutMs, [this.shutdown.signal, options.signal])
    const walk = this.walkFor(digest)
    walk.join()
    let next = 0
    try {
      for (;;) {
        while (next < walk.providers.length) {
          yield walk.providers[next++] as PeerRef
          if (next >= limit) return
        }
        if (walk.ended) break
        await raceSignal(walk.changed(), deadline.signal)
      }
    } catch (err) {
      // deadline, caller abort and shutdown end the lookup quietly
      if (!deadline.signal.aborted) throw new LookupFailedError(digest, { cause: err })
    } finally {
      walk.leave()
      deadline.clear()
    }
    if (walk.error !== undefined) throw new LookupFailedError(digest, { cause: walk.error })
  }

  /**
   * Candidates for the peers closest to the blob's DHT key (kad-dht's XOR metric), self
   * excluded, each with an address: the closest of the local routing table, and every peer the
   * query heard of (its final answer included). The caller ranks them. Empty at once when the
   * routing table is.
   *
   * The query runs even when the table is small: a table fills as peers talk to the node, and
   * in a fan-out bench a quarter of 16 nodes started a pull knowing only 11-14 of the other 15,
   * chose other fetchers than the rest did, and sent origin 1.4-2.2× the image. Connected DHT
   * peers are candidates too: with K = 8 a query answer names 8 peers and a table may leave
   * some out, and in one 16-node run nodes chose two different pairs of fetchers for two blobs.
   */
  async closest(digest: string, options: LookupOptions = {}): Promise<PeerRef[]> {
    if (options.signal?.aborted === true || !this.ready()) return []
    const deadline = withDeadline(options.timeoutMs ?? this.lookupTimeoutMs, [this.shutdown.signal, options.signal])
    const walk = this.walkFor(digest)
    walk.join()
    try {
      // the deadline ends the wait at once, even while kad-dht still dials a dead peer
      await raceSignal(walk.done, deadline.signal)
    } catch (err) {
      if (!deadline.signal.aborted) throw new LookupFailedError(digest, { cause: err })
    } finally {
      walk.leave()
      deadline.clear()
    }
    if (walk.error !== undefined && walk.heard.size === 0) throw new LookupFailedError(digest, { cause: walk.error })
    // every peer heard of, not only those that answered in time: under load some answers come
    // late, and a node that leaves them out chooses other fetchers than the rest
    const heard = new Map(walk.heard)
    const ids = new Set([...(await this.tableAndConnected(digest, LOCAL_CLOSEST)), ...heard.keys()])
    ids.delete(this.backend.selfId)
    this.rememberNear(digest, [...ids])
    const out: PeerRef[] = []
    for (const id of ids) {
      const addrs = heard.get(id) ?? []
      const known = addrs.length > 0 ? addrs : transportAddrs(await this.backend.addressesOf(id).catch(() => []))
      if (known.length > 0) out.push({ id, addrs: known })
    }
    return out
  }

  /**
   * The nodes this one knows nearest the blob's key, itself included, with no network: the
   * closest of the local routing table, the peers a recent walk or closest-peers query found
   * (see NEAR_KNOWN_MS), and the connected DHT peers. An origin fetcher names them to the nodes
   * that ask it: it is near the key, so its table knows that neighbourhood best, and a node whose
   * query missed some of those nodes learns of them from it (see planFanout).
   */
  async knownNearest(digest: string, count: number): Promise<string[]> {
    // the table's closest `count` are all it can add to the nearest `count`
    const ids = [this.backend.selfId, ...(await this.tableAndConnected(digest, count)), ...(this.recentNear(digest) ?? [])]
    return rankByDistance(digest, ids).slice(0, count)
  }

  /** the local routing table's `count` closest to the digest's key, and the connected DHT peers (no network) */
  private async tableAndConnected(digest: string, count: number): Promise<string[]> {
    const connected = await this.backend.connectedPeers().catch(() => [])
    return [...this.backend.localClosest(digestToCid(digest), count), ...connected]
  }

  /**
   * The running providers walk for a digest, or a new one: a lookup and a closest-peers query
   * for the same blob share it (see SharedWalk). It runs MAX_WALK_MS at most.
   */
  private walkFor(digest: string): SharedWalk {
    const running = this.walks.get(digest)
    if (running?.joinable === true) return running
    const stop = new AbortController()
    const deadline = withDeadline(MAX_WALK_MS, [this.shutdown.signal, stop.signal])
    const walk = new SharedWalk(this.backend.findProviders(digestToCid(digest), { signal: deadline.signal }), deadline.signal, () => stop.abort(), this.backend.selfId)
    this.walks.set(digest, walk)
    void walk.done.then(() => {
      deadline.clear()
      if (this.walks.get(digest) === walk) this.walks.delete(digest)
      if (walk.complete && walk.heard.size > 0) this.rememberNear(digest, [...walk.heard.keys()])
    })
    return walk
  }

  private rememberNear(digest: string, peers: string[]): void {
    this.nearKey.delete(digest) // re-inserted last: the map stays oldest first
    this.nearKey.set(digest, { at: Date.now(), peers })
    for (const [old, entry] of this.nearKey) {
      if (this.nearKey.size <= NEAR_KNOWN_DIGESTS && Date.now() - entry.at <= NEAR_KNOWN_MS) break
      this.nearKey.delete(old)
    }
  }

  /** the peers known to be near the digest's key, if learnt within NEAR_KNOWN_MS */
  private recentNear(digest: string): string[] | undefined {
    const recent = this.nearKey.get(digest)
    return recent === undefined || Date.now() - recent.at > NEAR_KNOWN_MS ? undefined : recent.peers
  }

  /** the closest of the peers known lately to be near the digest's key, if any are */
  private nearPeers(digest: string): string[] | undefined {
    const recent = this.recentNear(digest)
    if (recent === undefined) return undefined
    try {
      return rankByDistance(digest, recent).slice(0, this.recordPeers)
    } catch {
      return undefined // not a peer id among them (never from kad-dht): walk as usual
    }
  }

  /** digests in the re-announce schedule */
  advertised(): string[] {
    return [...this.schedule.keys()]
  }

  /** stop re-announcing, abort in-flight provides and lookups, wait for them to settle */
  async stop(): Promise<void> {
    if (this.shutdown.signal.aborted) return
    this.shutdown.abort(new RouterStoppedError())
    this.unsubscribe()
    clearTimeout(this.passTimer)
    clearTimeout(this.pendingTimer)
    await Promise.allSettled([...this.inflight.values(), ...[...this.walks.values()].map((w) => w.done), this.passRunning])
  }

  /** one provide per digest at a time, under the router's own deadline */
  private provideShared(digest: string): Promise<void> {
    let running = this.inflight.get(digest)
    if (running === undefined) {
      running = this.provideOnce(digest).finally(() => this.inflight.delete(digest))
      // callers that stop waiting (abort) leave the shared provide unobserved
      running.catch(() => {})
      this.inflight.set(digest, running)
    }
    return running
  }

  private async provideOnce(digest: string): Promise<void> {
    const entry = this.schedule.get(digest)
    if (entry === undefined) return // withdrawn before it started
    if (this.backend.routingTableSize() === 0) {
      // kad-dht's provide would block until a peer appears: fail fast, stay pending
      throw new NoPeersError(`cannot advertise ${digest}: routing table is empty`)
    }
    const started = performance.now()
    const deadline = withDeadline(this.advertiseTimeoutMs, [this.shutdown.signal])
    let stored = 0
    let failure: unknown
    const storeRecord = this.backend.storeRecord?.bind(this.backend)
    const near = storeRecord === undefined ? undefined : this.nearPeers(digest)
    let walked = near === undefined
    try {
      if (storeRecord !== undefined && near !== undefined) stored = await storeRecord(entry.cid, near, { signal: deadline.signal })
      // (none of the peers near the key took it: walk to the closest, as kad-dht's provide does)
      if (stored === 0) {
        walked = true
        for await (const event of this.backend.provide(entry.cid, { signal: deadline.signal })) {
          if (event.name === 'PEER_RESPONSE' && event.messageName === 'ADD_PROVIDER') stored++
        }
      }
    } catch (err) {
      failure = err
    } finally {
      deadline.clear()
    }

    const current = this.schedule.get(digest)
    if (current === undefined) {
      // withdrawn while providing: provide re-added our local record after withdraw removed it
      await this.forgetLocalRecord(digest, entry.cid)
    } else if (stored > 0) {
      // (or withdrawn and advertised again meanwhile: the same record went out)
      current.storedAt = Date.now()
    }
    const ms = Math.round(performance.now() - started)
    if (stored > 0) {
      this.log.debug({ digest, peers: stored, ms, walked }, 'advertised')
      return
    }
    if (this.shutdown.signal.aborted) throw new RouterStoppedError({ cause: failure })
    if (deadline.timedOut()) throw new AdvertiseTimeoutError(digest, this.advertiseTimeoutMs, { cause: failure })
    throw new AdvertiseFailedError(digest, failure === undefined ? undefined : { cause: failure })
  }

  private async forgetLocalRecord(digest: string, cid: CID): Promise<void> {
    try {
      await this.backend.cancelReprovide(cid)
    } catch (err) {
      this.log.warn({ err, digest }, 'could not drop local provider record')
    }
  }

  private onPeerAdded(): void {
    if (this.pendingTimer !== undefined || this.shutdown.signal.aborted) return
    let pending = false
    for (const entry of this.schedule.values()) {
      if (entry.storedAt === undefined) {
        pending = true
        break
      }
    }
    if (!pending) return
    this.pendingTimer = setTimeout(() => {
      this.pendingTimer = undefined
      this.runPass(true).catch((err: unknown) => this.log.error({ err }, 're-announce pass failed'))
    }, PENDING_DEBOUNCE_MS)
  }

  private intervalPass(): void {
    void this.runPass(false)
      .catch((err: unknown) => this.log.error({ err }, 're-announce pass failed'))
      .finally(() => {
        if (!this.shutdown.signal.aborted) {
          this.passTimer = setTimeout(() => this.intervalPass(), this.reannounceIntervalMs)
        }
      })
  }

  /** re-announce the schedule (or only its pending part); one pass at a time */
  private runPass(onlyPending: boolean): Promise<void> {
    if (this.passRunning !== undefined) return this.passRunning
    this.passRunning = this.reannounce(onlyPending).finally(() => {
      this.passRunning = undefined
    })
    return this.passRunning
  }

  private async reannounce(onlyPending: boolean): Promise<void> {
    if (this.schedule.size === 0 || this.shutdown.signal.aborted) return
    if (this.backend.routingTableSize() === 0) {
      this.log.debug({ digests: this.schedule.size }, 're-announce skipped: routing table is empty')
      return
    }
    // a record stored less than half an interval ago is still fresh
    const freshSince = Date.now() - this.reannounceIntervalMs / 2
    const due: string[] = []
    for (const [digest, entry] of this.schedule) {
      if (entry.storedAt === undefined || (!onlyPending && entry.storedAt < freshSince)) due.push(digest)
    }
    if (due.length === 0) return
    const started = performance.now()
    let ok = 0
    let failed = 0
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < due.length && !this.shutdown.signal.aborted) {
        const digest = due[next++]!
        if (!this.schedule.has(digest)) continue
        try {
          await this.provideShared(digest)
          ok++
        } catch (err) {
          failed++
          this.log.debug({ err, digest }, 're-announce failed')
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(this.reannounceConcurrency, due.length) }, worker))
    const ms = Math.round(performance.now() - started)
    this.log.info({ pendingOnly: onlyPending, ok, failed, ms }, 're-announced digests')
  }
}

interface Deadline {
  signal: AbortSignal
  timedOut(): boolean
  clear(): void
}

/**
 * A signal that aborts after `timeoutMs` or when any input aborts; `clear()`
 * removes the timer and the listeners on the inputs.
 */
function withDeadline(timeoutMs: number, inputs: Array<AbortSignal | undefined>): Deadline {
  const controller = new AbortController()
  // kad-dht attaches one listener per contacted peer
  setMaxListeners(Number.POSITIVE_INFINITY, controller.signal)
  let timedOut = false
  const onAbort = function (this: AbortSignal): void {
    controller.abort(this.reason)
  }
  const timer = setTimeout(() => {
    timedOut = true
    controller.abort(new DOMException(`deadline of ${timeoutMs} ms exceeded`, 'TimeoutError'))
  }, timeoutMs)
  const live: AbortSignal[] = []
  for (const input of inputs) {
    if (input === undefined) continue
    if (input.aborted) {
      controller.abort(input.reason)
      break
    }
    input.addEventListener('abort', onAbort, { once: true })
    live.push(input)
  }
  return {
    signal: controller.signal,
    timedOut: () => timedOut,
    clear: () => {
      clearTimeout(timer)
      for (const input of live) input.removeEventListener('abort', onAbort)
    }
  }
}

/** wait for `promise`, or reject with the signal's reason when it aborts first */
async function raceSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise
  signal.throwIfAborted()
  let onAbort: (() => void) | undefined
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        onAbort = () => reject(signal.reason)
        signal.addEventListener('abort', onAbort, { once: true })
      })
    ])
  } finally {
    if (onAbort !== undefined) signal.removeEventListener('abort', onAbort)
  }
}
