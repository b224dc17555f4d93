/**
 * The "who holds what" seam. The transfer scheduler sees only this interface;
 * `DhtContentRouter` (kad-dht) and `MemoryContentRouter` (tests, simulation)
 * implement it.
 */

export interface PeerRef {
  /** peer id string (`12D3KooW...`) */
  id: string
  /**
   * transport multiaddrs of the peer, without a trailing `/p2p/<id>`
   * (dial `${addr}/p2p/${id}`); never empty
   */
  addrs: string[]
}

export interface AdvertiseOptions {
  signal?: AbortSignal
}

export interface LookupOptions {
  signal?: AbortSignal
  /** stop after this many peers (default 8) */
  limit?: number
  /** stop after this long (default: the implementation's lookup deadline, 2 s for the DHT) */
  timeoutMs?: number
}

export interface ContentRouter {
  /** true when the node has at least one peer in its routing table */
  ready(): boolean
  /**
   * Announce that this node holds (part of) the blob. The digest joins the
   * re-announce schedule before the first attempt, so a failed attempt is
   * retried later. Resolves when the record is stored on at least one peer;
   * rejects with `NoPeersError` at once when the routing table is empty, with
   * `AdvertiseTimeoutError` at the deadline when no peer took the record, with
   * the signal's reason when the caller aborts. Never hangs.
   */
  advertise(digest: string, options?: AdvertiseOptions): Promise<void>
  /** stop announcing (local bookkeeping: no more re-provides) */
  withdraw(digest: string): Promise<void>
  /**
   * Peers that announced the digest, excluding self, de-duplicated, each with
   * at least one address. Ends (without error) after `limit` peers, at the
   * deadline, or when `signal` aborts; ends at once when the routing table is
   * empty. Throws only for an invalid digest or an unexpected routing failure.
   */
  lookup(digest: string, options?: LookupOptions): AsyncIterable<PeerRef>
  /**
   * Up to `count` peer ids nearest the digest's DHT key, this node's own among them, nearest
   * first, from what the node knows already (no network). Rejects only for an invalid digest;
   * a node that knows no peer names itself.
   */
  knownNearest(digest: string, count: number): Promise<string[]>
}

export const DEFAULT_LOOKUP_LIMIT = 8

/** the longest one DHT walk for a blob runs, whoever waits on it (a longer deadline is cut to this) */
export const MAX_WALK_MS = 10_000

/** Base class of routing errors: a stable `code`, built with `{ cause }` where there is one. */
export class RoutingError extends Error {
  readonly code: string

  constructor(message: string, code: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'RoutingError'
    this.code = code
  }
}

export class InvalidDigestError extends RoutingError {
  constructor(digest: string, options?: ErrorOptions) {
    super(`invalid digest ${JSON.stringify(digest.slice(0, 100))}`, 'ERR_INVALID_DIGEST', options)
    this.name = 'InvalidDigestError'
  }
}

/** advertise with an empty routing table: nothing to store the record on (yet) */
export class NoPeersError extends RoutingError {
  constructor(message = 'routing table is empty', options?: ErrorOptions) {
    super(message, 'ERR_NO_PEERS', options)
    this.name = 'NoPeersError'
  }
}

/** the advertise deadline passed before any peer stored the record */
export class AdvertiseTimeoutError extends RoutingError {
  constructor(digest: string, timeoutMs: number, options?: ErrorOptions) {
    super(`advertising ${digest} stored no record within ${timeoutMs} ms`, 'ERR_ADVERTISE_TIMEOUT', options)
    this.name = 'AdvertiseTimeoutError'
  }
}

/** the provide query ran to its end and no peer stored the record */
export class AdvertiseFailedError extends RoutingError {
  constructor(digest: string, options?: ErrorOptions) {
    super(`advertising ${digest} stored no record on any peer`, 'ERR_ADVERTISE_FAILED', options)
    this.name = 'AdvertiseFailedError'
  }
}

/** the provider query failed for another reason than its deadline or an abort */
export class LookupFailedError extends RoutingError {
  constructor(digest: string, options?: ErrorOptions) {
    super(`provider lookup for ${digest} failed`, 'ERR_LOOKUP_FAILED', options)
    this.name = 'LookupFailedError'
  }
}

/** the router was stopped (node shutdown) while the operation ran */
export class RouterStoppedError extends RoutingError {
  constructor(options?: ErrorOptions) {
    super('content router stopped', 'ERR_ROUTER_STOPPED', options)
    this.name = 'RouterStoppedError'
  }
}
