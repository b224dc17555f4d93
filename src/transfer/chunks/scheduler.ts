import { ChunkBuffers } from './buffers.js'
import { type ChunkPlan, chunkBounds } from './plan.js'
import { timeoutSignal } from '../../util/abort.js'

/** Somewhere chunks come from: one peer, or origin. */
export interface ChunkSource {
  /** peer id, or 'origin' */
  readonly id: string
  readonly kind: 'peer' | 'origin'
  /** whether the source holds chunk `index` (a peer's bitfield; origin holds all); a lookup, asked per chunk and source */
  has(index: number): boolean
  /**
   * Called on every pump: a source that learns its holdings by asking (a peer) asks again if
   * it is time. (Not in `has`: that is asked for every chunk, and reading the clock there,
   * as many times per pump, showed in a fan-out's allocation profile.)
   */
  poll?(): void
  /**
   * The bytes of chunk `index`; the scheduler verifies them. A source that is busy (it serves
   * others up to its cap) rejects with an error carrying `retryAfterMs`: not a failure, it is
   * asked nothing more until then. `into` has exactly the chunk's
   * length: a source fills it and returns it (or returns bytes of its own). `onBytes`, when
   * given, is called as bytes arrive (origin reports them: a flow that stops moving gives its
   * turn back, see OriginTurns).
   */
  fetch(index: number, signal: AbortSignal, into: Buffer, onBytes?: (bytes: number) => void): Promise<Uint8Array>
  /**
   * Called when the scheduler takes the source: a source whose holdings grow (a peer's answer
   * names new chunks) calls `wake`, and the scheduler gives them out at once instead of at its
   * next timed pump.
   */
  watch?(wake: () => void): void
}

export interface SchedulerOptions {
  plan: ChunkPlan
  /** chunk check (against the table); a false return marks the source bad for this blob */
  verify(index: number, bytes: Uint8Array, source: ChunkSource): boolean
  /** stores a verified chunk; called once per chunk, in any order; `bytes` is the callee's from then on (give it back to `buffers`) */
  accept(index: number, bytes: Uint8Array): Promise<void>
  /** where the buffers chunks are received into come from (default: fresh ones) */
  buffers?: ChunkBuffers
  peers: ChunkSource[]
  /** requests to peers in flight, shared by the node's downloads (default: only maxInflightPerPeer bounds them) */
  slots?: RequestSlots
  /** the source of truth, used when no peer has a chunk or peers are too slow */
  origin?: ChunkSource
  /** origin requests in flight, shared by the node's fan-out downloads (default: only maxInflightOrigin bounds them) */
  originTurns?: OriginTurns
  /** an origin request that received no byte for this long gives its turn back (default 5 s) */
  originTurnIdleMs?: number
  /**
   * Origin's next chunk when the fleet shares origin (OriginStripes.next), among those `free`
   * says no source holds and none is fetching; undefined: none of them (origin may still hedge
   * a slow chunk it `has`).
   */
  originPick?(free: (index: number) => boolean): number | undefined
  /** chunks already held (resumed downloads) */
  done?: ReadonlySet<number>
  maxInflightPerPeer?: number
  maxInflightOrigin?: number
  /** a request slower than this is abandoned */
  requestTimeoutMs?: number
  /** the same for origin (default: requestTimeoutMs): on a shared link a chunk may take long */
  originRequestTimeoutMs?: number
  /**
   * a chunk in flight longer than this, and longer than HEDGE_MULTIPLE times the median time
   * chunks took lately, is also asked of another source
   */
  hedgeAfterMs?: number
  /** consecutive failures after which a peer is dropped for this blob, or origin gives up */
  maxPeerFailures?: number
  /**
   * Whether chunks no source holds yet may still come (peers still downloading, an origin gate
   * that may open): the scheduler then waits instead of failing with NoSourceError.
   */
  mayWait?(): boolean
  /** how often the scheduler looks again at its sources (default 100 ms): for hedges and rests that are over, and holdings of sources that do not `watch` */
  pollMs?: number
  /** a peer sent bytes that failed verification */
  onBadPeer?(peer: string, index: number): void
  /** a peer was dropped for this blob after failing `maxPeerFailures` times in a row (the last error) */
  onFailingPeer?(peer: string, err: unknown): void
  /** an origin request for chunk `index` received nothing for `originTurnIdleMs` and gave its turn back */
  onOriginIdle?(index: number): void
  onChunk?(index: number, source: ChunkSource, bytes: number): void
}

export interface ScheduleResult {
  /** bytes accepted, by source id */
  bySource: Map<string, number>
  /** requests abandoned (timeout, hedge lost, error) */
  wasted: number
  /** copies asked of a chunk already in flight: once it outlived the hedge delay, or earlier in the end game */
  hedged: number
  endGame: number
  /** requests whose chunk another copy delivered first (cut off, or answered after it) */
  lost: number
}

interface Inflight {
  source: ChunkSource
  controller: AbortController
  startedAt: number
  into: Buffer
  /** it holds one of the node's origin turns */
  turn: boolean
  /** when its last bytes arrived (or it started), ms since epoch: reported by origin only */
  lastBytes: number
}

const DEFAULTS = {
  maxInflightPerPeer: 2,
  maxInflightOrigin: 4,
  requestTimeoutMs: 15_000,
  hedgeAfterMs: 3_000,
  maxPeerFailures: 3,
  pollMs: 100,
  originTurnIdleMs: 5_000,
}

/**
 * An origin request for a chunk of at most this share of the chunk size (64 KiB at 1 MiB) takes
 * no origin turn (see OriginTurns); the peer protocol's isSmallChunk, for the upload slots, draws
 * the same line.
 */
const TURN_FREE_SHARE = 1 / 16
/** Origin hedges a chunk a peer is slow with only after this many hedge delays. */
const ORIGIN_HEDGE_FACTOR = 4

/**
 * A chunk is slow when it takes this many times the median of the last chunks: on a link a
 * whole fleet shares, every chunk takes seconds, and a fixed delay would duplicate most of them.
 */
const HEDGE_MULTIPLE = 2

/** how long a chunk in flight waits before `source` copies it (outside the end game) */
function hedgeAfterFor(source: ChunkSource, hedgeDelay: number): number {
  return (source.kind === 'origin' ? ORIGIN_HEDGE_FACTOR : 1) * hedgeDelay
}

/** how long a busy source is left alone (its Retry-After, within these bounds) */
const MIN_BUSY_BACKOFF_MS = 250
const MAX_BUSY_BACKOFF_MS = 5_000
/** chunk durations the median is taken over */
const RECENT_DURATIONS = 16

/**
 * The chunk requests to peers a node has in flight at once, over all its downloads. The node's
 * downlink is one, so every request past what fills it only makes all of them slower: in a
 * 16-node fan-out, two requests per peer with a dozen peers per blob kept 60-90 chunks in flight
 * per node, each took tens of seconds, and the end game duplicated nearly every one of them
 * (1,212 abandoned requests for 528 chunks; uploads counted 3.5 GB against 1.9 GB received).
 *
 * Each download running may always have its fair share (max ÷ downloads, at least one) in
 * flight, even when the others hold every slot: the download whose chunk just landed takes the
 * freed slot at once, and a download whose few requests hung on a slow peer was otherwise left
 * waiting with no slot to hedge them (60 s without a chunk, in one run). The total then exceeds
 * the cap by at most one share.
 */
export class RequestSlots {
  readonly max: number
  private used = 0
  private downloads = 0

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`request slots must be a positive integer, got ${max}`)
    this.max = max
  }

  /** whether a download with `mine` requests in flight may start another */
  mayStart(mine: number): boolean {
    return this.used < this.max || mine < Math.max(1, Math.floor(this.max / Math.max(1, this.downloads)))
  }

  /** a download starts / stops counting towards the fair share */
  join(): void {
    this.downloads++
  }

  leave(): void {
    this.downloads--
  }

  /** requests holding a slot now */
  get inUse(): number {
    return this.used
  }

  take(): void {
    this.used++
  }

  give(): void {
    this.used--
  }
}

/**
 * The origin requests a node has in flight over all its fan-out downloads, taken in turn.
 * Origin's link is the fleet's limit there, and every flow at origin shares it: with one request
 * per fetcher and blob, a 4-node fleet pulling three layers kept 12 flows at origin, each with a
 * twelfth of its rate where 4 get a quarter, and a chunk only passes on to the other nodes once
 * it is whole. `scripts/bench/fanout --nodes 4 --rounds 3`, runs of the same hour: p50 1.27x
 * T_min and 44 CPU-s per GB with 12 flows (two runs), 1.24-1.25x and 36-37 CPU-s per GB with
 * one request per fetcher over its downloads (two runs).
 *
 * A download that finds no turn free waits in line and is woken (its scheduler pumps) when one
 * frees up; a turn goes to the download first in line, not to the one that gave it back, so the
 * node's downloads take origin's chunks in turn.
 *
 * A request that receives nothing for `originTurnIdleMs` (5 s) gives its turn back and goes on
 * without one: a flow that hung at origin would otherwise hold up every other fan-out blob of the
 * node, and the other nodes would only give this fetcher's shares to the next after their stall
 * watchdog (p2p.fetcherStall, 12 s). A healthy flow is never that silent, even one of a dozen
 * sharing origin's link.
 *
 * A chunk of at most a sixteenth of the chunk size (TURN_FREE_SHARE) takes no turn: it barely
 * shares origin's link, and the blobs that small are mostly image configs, which a runtime
 * fetches among its first few blobs and waits on before it asks for the next. Behind a turn, a
 * 504-byte config waited for a fetcher's 1 MiB layer chunk: in a 16-node round, origin answered
 * it 1.7 s after the fetcher asked for it.
 */
export class OriginTurns {
  readonly max: number
  private used = 0
  private readonly line: (() => void)[] = []
  /** the download being woken: the one waiter that may take a turn while others wait */
  private waking: (() => void) | undefined
  private draining = false

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`origin turns must be a positive integer, got ${max}`)
    this.max = max
  }

  /** takes a turn, or puts `wake` in line (once) to be called when one frees up */
  take(wake: () => void): boolean {
    if (this.used < this.max && (this.line.length === 0 || this.waking === wake)) {
      this.used++
      return true
    }
    if (this.waking !== wake && !this.line.includes(wake)) this.line.push(wake)
    return false
  }

  /** gives a turn back; the downloads in line are woken once the caller's own work is over */
  give(): void {
    this.used--
    if (this.draining || this.line.length === 0) return
    this.draining = true
    queueMicrotask(() => {
      this.draining = false
      // each one woken takes the turn if it still needs one, else leaves it to the next
      while (this.used < this.max && this.line.length > 0) {
        this.waking = this.line.shift()
        this.waking?.()
        this.waking = undefined
      }
    })
  }

  /** a download that ended leaves the line */
  leave(wake: () => void): void {
    const at = this.line.indexOf(wake)
    if (at >= 0) this.line.splice(at, 1)
  }

  /** turns taken now */
  get inUse(): number {
    return this.used
  }
}

/** Origin's own bytes disagree with the chunk table: the table is false and must be dropped. */
export class TableMismatchError extends Error {
  constructor(index: number) {
    super(`origin sent chunk ${index} that does not match the chunk table`)
    this.name = 'TableMismatchError'
  }
}

export class NoSourceError extends Error {
  constructor(missing: number) {
    super(`no source can provide ${missing} remaining chunk(s)`)
    this.name = 'NoSourceError'
  }
}

/**
 * Downloads every chunk of one blob from several sources at once.
 *
 * - Each peer has a bounded number of requests in flight; a slot is given the rarest chunk the
 *   peer holds (fewest holders), lowest index first among equals, so rare chunks spread and the
 *   in-order stream to the runtime advances.
 * - Origin is one more source: it takes the chunks no usable peer holds, and hedges chunks that
 *   peers are slow to deliver.
 * - A request that outlives the hedge delay is duplicated on another source that holds the chunk
 *   (end game: once nothing is left to assign, an idle slot duplicates a straggler that has taken
 *   as long as chunks usually take); the first verified answer wins and the others are aborted.
 * - A peer whose bytes fail verification is dropped at once; one that keeps failing or timing
 *   out is dropped after a few tries. Its chunks go to other sources.
 */
export class ChunkScheduler {
  private readonly opts: SchedulerOptions & typeof DEFAULTS
  private readonly done: Set<number>
  /** each chunk's requests in flight, oldest first (added in start order, removed in place) */
  private readonly inflight = new Map<number, Inflight[]>()
  private readonly load = new Map<ChunkSource, number>()
  private readonly failures = new Map<ChunkSource, number>()
  /** sources that said they are busy: asked nothing until then (ms since epoch) */
  private readonly busyUntil = new Map<ChunkSource, number>()
  /** peers dropped for bytes that failed verification */
  private readonly liars = new Set<string>()
  private readonly peers: ChunkSource[]
  private readonly result: ScheduleResult = { bySource: new Map(), wasted: 0, hedged: 0, endGame: 0, lost: 0 }
  private settle!: { resolve: (r: ScheduleResult) => void; reject: (e: Error) => void }
  private finished = false
  /** this download's pump, as it waits in line for an origin turn */
  private readonly wake = (): void => this.pump()
  /** a pump once the current turn's work is done (many sources may wake it at once) */
  private readonly soon = (): void => {
    if (this.pumpQueued) return
    this.pumpQueued = true
    queueMicrotask(() => {
      this.pumpQueued = false
      this.pump()
    })
  }
  private pumpQueued = false
  /** the holders of each chunk missing, counted again by every pump that gives out a chunk (one array, reused) */
  private readonly holders: Int32Array
  private peersLeft = false
  private accepting = Promise.resolve()
  private hedgeTimer: NodeJS.Timeout | undefined
  /** where the next pump starts among the sources */
  private turn = -1
  /** requests to peers in flight */
  private peerRequests = 0
  private readonly buffers: ChunkBuffers
  /** how long the last accepted chunks took, ms */
  private readonly durations: number[] = []
  /** the median of `durations`, until one is added */
  private median: number | undefined

  constructor(opts: SchedulerOptions) {
    this.opts = { ...DEFAULTS, ...stripUndefined(opts) }
    this.buffers = opts.buffers ?? new ChunkBuffers(opts.plan.chunkSize, 0)
    this.done = new Set(opts.done ?? [])
    this.peers = [...opts.peers]
    this.holders = new Int32Array(opts.plan.count)
    for (const peer of this.peers) peer.watch?.(this.soon)
  }

  /** Resolves when every chunk is accepted; rejects when no source is left or the signal aborts. */
  run(signal: AbortSignal): Promise<ScheduleResult> {
    return new Promise<ScheduleResult>((resolve, reject) => {
      this.settle = { resolve, reject }
      this.opts.slots?.join()
      if (signal.aborted) {
        this.fail(signal.reason as Error)
        return
      }
      signal.addEventListener('abort', () => this.fail(signal.reason as Error), { once: true })
      this.hedgeTimer = setInterval(() => this.pump(), Math.max(10, Math.min(this.opts.pollMs, Math.floor(this.opts.hedgeAfterMs / 4))))
      this.hedgeTimer.unref()
      this.pump()
    })
  }

  /** false once dropPeers() left the peers for good */
  get takesPeers(): boolean {
    return !this.peersLeft
  }

  /** Whether a peer is still a source (not dropped for failing or for bad bytes). */
  uses(peerId: string): boolean {
    return this.peers.some((p) => p.id === peerId)
  }

  /** Takes back a peer dropped for failing, with a clean slate; false for one that sent bad bytes (never taken back), or once peers were left. */
  readmit(peer: ChunkSource): boolean {
    if (this.liars.has(peer.id) || !this.takesPeers) return false
    this.failures.delete(peer)
    this.addPeer(peer)
    return true
  }

  /** Stops taking chunks from peers for good (their requests are aborted, none is added or taken back): origin, if any, takes every chunk still missing. */
  dropPeers(): void {
    this.peersLeft = true
    for (const peer of [...this.peers]) this.dropPeer(peer)
    this.pump()
  }

  /** What the download waits on, for a log line. */
  describe(): { missing: number; inflight: number; peers: number; heldByPeers: number; resting: number; failing: number } {
    const now = Date.now()
    const holders = this.rarities()
    let missing = 0
    let heldByPeers = 0
    for (let i = 0; i < holders.length; i++) {
      if (this.done.has(i)) continue
      missing++
      if ((holders[i] as number) > 0) heldByPeers++
    }
    return {
      missing,
      inflight: this.inflight.size,
      peers: this.peers.length,
      heldByPeers,
      resting: this.sources().filter((s) => (this.busyUntil.get(s) ?? 0) > now).length,
      failing: this.peers.filter((p) => (this.failures.get(p) ?? 0) > 0).length,
    }
  }

  /** A peer found after the start (a late lookup answer). */
  addPeer(peer: ChunkSource): void {
    if (!this.takesPeers || this.peers.some((p) => p.id === peer.id)) return
    this.peers.push(peer)
    peer.watch?.(this.soon)
    this.pump()
  }

  private sources(): ChunkSource[] {
    return this.opts.origin ? [...this.peers, this.opts.origin] : this.peers
  }

  private capacity(source: ChunkSource): number {
    return source.kind === 'origin' ? this.opts.maxInflightOrigin : this.opts.maxInflightPerPeer
  }

  /**
   * How many peers hold each chunk still missing, counted once per pump (holdings only change
   * between pumps): picking for every source over every chunk and every peer was, with a dozen
   * peers per blob, a fleet node's busiest code. The array is the scheduler's own, valid until
   * the next call; indexed loops, because a pump that runs before the compiler optimised it
   * allocated an iterator and its results for every chunk.
   */
  private rarities(): Int32Array {
    const count = this.holders
    const peers = this.peers
    for (let i = 0; i < count.length; i++) {
      let n = 0
      if (!this.done.has(i)) for (let k = 0; k < peers.length; k++) if ((peers[k] as ChunkSource).has(i)) n++
      count[i] = n
    }
    return count
  }

  private pump(): void {
    if (this.finished) return
    if (this.done.size === this.opts.plan.count) {
      this.complete()
      return
    }
    const now = Date.now()
    this.releaseIdleTurns(now)
    for (let k = 0; k < this.peers.length; k++) (this.peers[k] as ChunkSource).poll?.()
    // counted once a source has a free slot: most timed pumps find every slot taken
    let rarity: Int32Array | undefined
    const hedgeDelay = this.hedgeDelay()
    const sources = this.sources()
    // Each pump starts one source further, so that with few request slots the same peers are
    // not asked first every time.
    this.turn = (this.turn + 1) % Math.max(1, sources.length)
    /** in line for an origin turn: woken when one frees up */
    let inLine = false
    let progress = true
    while (progress) {
      progress = false
      for (let k = 0; k < sources.length; k++) {
        const source = sources[(this.turn + k) % sources.length] as ChunkSource
        if ((this.load.get(source) ?? 0) >= this.capacity(source)) continue
        if ((this.busyUntil.get(source) ?? 0) > now) continue
        if (source.kind === 'peer' && this.opts.slots?.mayStart(this.peerRequests) === false) continue
        rarity ??= this.rarities()
        const index = this.pick(source, now, rarity, hedgeDelay)
        if (index === undefined) continue
        if (source.kind === 'origin' && this.takesTurn(index) && this.opts.originTurns?.take(this.wake) === false) {
          inLine = true
          continue
        }
        this.start(index, source, now)
        progress = true
      }
    }
    const resting = sources.some((source) => (this.busyUntil.get(source) ?? 0) > now)
    if (this.inflight.size === 0 && this.done.size < this.opts.plan.count && !resting && !inLine && this.opts.mayWait?.() !== true) {
      this.fail(new NoSourceError(this.opts.plan.count - this.done.size))
    }
  }

  /** Origin requests that received nothing for long give their turns back (see OriginTurns). */
  private releaseIdleTurns(now: number): void {
    const turns = this.opts.originTurns
    if (turns === undefined || turns.inUse === 0) return
    for (const [index, flights] of this.inflight) {
      for (const flight of flights) {
        if (!flight.turn || now - flight.lastBytes <= this.opts.originTurnIdleMs) continue
        flight.turn = false
        turns.give()
        this.opts.onOriginIdle?.(index)
      }
    }
  }

  /** The chunk this source should fetch next, if any. */
  private pick(source: ChunkSource, now: number, holders: Int32Array, hedgeDelay: number): number | undefined {
    const isOrigin = source.kind === 'origin'
    if (isOrigin && this.opts.originPick !== undefined) {
      const chosen = this.opts.originPick((i) => !this.done.has(i) && !this.inflight.has(i) && holders[i] === 0)
      if (chosen !== undefined) return chosen
    }
    let best: number | undefined
    let bestRarity = Number.POSITIVE_INFINITY
    let straggler: number | undefined
    let stragglerAge = -1
    for (let i = 0; i < this.opts.plan.count; i++) {
      if (this.done.has(i) || !source.has(i)) continue
      const flights = this.inflight.get(i)
      if (flights === undefined) {
        const rarity = holders[i] as number
        // origin only takes what no peer can give
        if (isOrigin && rarity > 0) continue
        if (rarity < bestRarity) {
          best = i
          bestRarity = rarity
        }
        continue
      }
      if (flights.some((f) => f.source === source)) continue
      const age = now - (flights[0] as Inflight).startedAt
      if (age > stragglerAge) {
        straggler = i
        stragglerAge = age
      }
    }
    if (best !== undefined) return best
    // Hedge: a chunk in flight too long, or the end game when nothing else is left for this source.
    // Origin waits longer before it hedges a peer: it is the source asked as little as possible.
    // The end game is global: every missing chunk is in flight. (A peer with nothing free for
    // it alone is common mid-download, when peers hold a few chunks each: that is no end game.)
    // In the end game a straggler is copied once it has taken as long as chunks usually take:
    // a younger one most likely lands before the copy would, and the copy's bytes go to waste.
    const endGame = this.done.size + this.inflight.size === this.opts.plan.count
    const hedgeAfter = hedgeAfterFor(source, hedgeDelay)
    if (straggler !== undefined && (stragglerAge >= hedgeAfter || (endGame && !isOrigin && stragglerAge >= this.medianChunkMs()))) {
      const flights = this.inflight.get(straggler) ?? []
      if (flights.length < 2 || stragglerAge >= hedgeAfter * 2) return straggler
    }
    return undefined
  }

  /** the median time the last chunks took, ms (0 before the first) */
  medianChunkMs(): number {
    if (this.durations.length === 0) return 0
    // (taken on every pump: sorted again only after a chunk came in)
    if (this.median === undefined) {
      const sorted = [...this.durations].sort((a, b) => a - b)
      this.median = sorted[sorted.length >> 1] as number
    }
    return this.median
  }

  /** whether an origin request for chunk `index` needs an origin turn */
  private takesTurn(index: number): boolean {
    const { start, end } = chunkBounds(this.opts.plan, index)
    return end - start > TURN_FREE_SHARE * this.opts.plan.chunkSize
  }

  /** how long a chunk may take before it is hedged: the configured delay, or longer when chunks are slow anyway */
  private hedgeDelay(): number {
    return Math.max(this.opts.hedgeAfterMs, HEDGE_MULTIPLE * this.medianChunkMs())
  }

  private start(index: number, source: ChunkSource, now: number): void {
    const controller = new AbortController()
    const { start, end } = chunkBounds(this.opts.plan, index)
    const turn = source.kind === 'origin' && this.opts.originTurns !== undefined && this.takesTurn(index)
    const flight: Inflight = { source, controller, startedAt: now, into: this.buffers.take(end - start), turn, lastBytes: now }
    const flights = this.inflight.get(index) ?? []
    if (flights.length > 0) {
      const age = now - (flights[0] as Inflight).startedAt
      if (age >= hedgeAfterFor(source, this.hedgeDelay())) this.result.hedged++
      else this.result.endGame++
    }
    flights.push(flight)
    this.inflight.set(index, flights)
    this.load.set(source, (this.load.get(source) ?? 0) + 1)
    if (source.kind === 'peer') {
      this.peerRequests++
      this.opts.slots?.take()
    }
    const timeoutMs = source.kind === 'origin' ? (this.opts.originRequestTimeoutMs ?? this.opts.requestTimeoutMs) : this.opts.requestTimeoutMs
    const signal = timeoutSignal(timeoutMs, controller.signal)
    const onBytes = turn
      ? (): void => {
          flight.lastBytes = Date.now()
        }
      : undefined
    source.fetch(index, signal, flight.into, onBytes).then(
      (bytes) => this.onBytes(index, flight, bytes),
      (err: unknown) => this.onError(index, flight, err),
    )
  }

  private end(index: number, flight: Inflight): void {
    this.load.set(flight.source, (this.load.get(flight.source) ?? 1) - 1)
    if (flight.source.kind === 'peer') {
      this.peerRequests--
      this.opts.slots?.give()
    } else if (flight.turn) {
      flight.turn = false
      this.opts.originTurns?.give()
    }
    const flights = this.inflight.get(index)
    if (flights === undefined) return
    const rest = flights.filter((f) => f !== flight)
    if (rest.length === 0) this.inflight.delete(index)
    else this.inflight.set(index, rest)
  }

  private onBytes(index: number, flight: Inflight, bytes: Uint8Array): void {
    this.end(index, flight)
    // a source that answered with bytes of its own leaves `into` unused
    if (bytes !== flight.into) this.buffers.give(flight.into)
    if (this.finished || this.done.has(index)) {
      this.buffers.give(bytes)
      this.result.wasted++
      if (this.done.has(index)) this.result.lost++
      this.pump()
      return
    }
    if (!this.opts.verify(index, bytes, flight.source)) {
      this.buffers.give(bytes)
      if (flight.source.kind === 'origin') {
        this.fail(new TableMismatchError(index))
        return
      }
      this.liars.add(flight.source.id)
      if (this.dropPeer(flight.source)) this.opts.onBadPeer?.(flight.source.id, index)
      this.pump()
      return
    }
    this.failures.delete(flight.source)
    this.durations.push(Date.now() - flight.startedAt)
    if (this.durations.length > RECENT_DURATIONS) this.durations.shift()
    this.median = undefined
    this.done.add(index)
    for (const other of this.inflight.get(index) ?? []) other.controller.abort()
    const id = flight.source.id
    this.result.bySource.set(id, (this.result.bySource.get(id) ?? 0) + bytes.byteLength)
    this.opts.onChunk?.(index, flight.source, bytes.byteLength)
    // accept() calls are serialised so that a store write failure stops everything cleanly
    this.accepting = this.accepting.then(() => this.opts.accept(index, bytes)).catch((err: Error) => this.fail(err))
    this.pump()
  }

  private onError(index: number, flight: Inflight, err: unknown): void {
    this.end(index, flight)
    this.buffers.give(flight.into)
    this.result.wasted++
    if (this.done.has(index)) this.result.lost++
    const retryAfterMs = (err as { retryAfterMs?: unknown } | undefined)?.retryAfterMs
    if (typeof retryAfterMs === 'number') {
      // busy, not failing: back off without counting it against the source
      this.busyUntil.set(flight.source, Date.now() + Math.min(Math.max(retryAfterMs, MIN_BUSY_BACKOFF_MS), MAX_BUSY_BACKOFF_MS))
    } else if (!this.finished && !this.done.has(index) && !flight.controller.signal.aborted) {
      const n = (this.failures.get(flight.source) ?? 0) + 1
      this.failures.set(flight.source, n)
      if (n >= this.opts.maxPeerFailures) {
        if (flight.source.kind === 'peer') {
          if (this.dropPeer(flight.source)) this.opts.onFailingPeer?.(flight.source.id, err)
        } else {
          this.fail(err instanceof Error ? err : new Error(String(err)))
          return
        }
      }
    }
    this.pump()
  }

  /** Stops using a peer for this blob and aborts its requests; false if it was already gone. */
  private dropPeer(source: ChunkSource): boolean {
    const i = this.peers.indexOf(source)
    if (i === -1) return false
    this.peers.splice(i, 1)
    for (const flights of this.inflight.values()) for (const f of flights) if (f.source === source) f.controller.abort()
    return true
  }

  private complete(): void {
    if (this.finished) return
    this.finished = true
    this.opts.slots?.leave()
    this.opts.originTurns?.leave(this.wake)
    clearInterval(this.hedgeTimer)
    this.accepting.then(
      () => this.settle.resolve(this.result),
      (err: Error) => this.settle.reject(err),
    )
  }

  private fail(err: Error): void {
    if (this.finished) return
    this.finished = true
    this.opts.slots?.leave()
    this.opts.originTurns?.leave(this.wake)
    clearInterval(this.hedgeTimer)
    for (const flights of this.inflight.values()) for (const f of flights) f.controller.abort()
    this.settle.reject(err)
  }
}

function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T
}
