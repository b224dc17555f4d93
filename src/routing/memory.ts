/**
 * In-memory twin of the DHT content router, for scheduler tests and
 * simulations without sockets: one shared `MemoryRoutingTable`, many fake
 * nodes attached to it.
 *
 * It keeps the DHT's observable behaviour where a scheduler could come to
 * depend on it:
 * - `ready()` is false until a second node is online (an empty routing table);
 * - `advertise` on a lone node rejects with `NoPeersError` but stays in the
 *   schedule, and is published when another node attaches (the DHT router
 *   re-announces when its routing table fills);
 * - `withdraw` is local bookkeeping: the record others see stays until it
 *   expires (`table.expire()`), as provider records on DHT peers do;
 * - a detached node's records stay visible (stale) unless it detaches with
 *   `{ forget: true }`: lookups can return peers that are gone;
 * - `lookup` ends quietly at its limit, deadline or abort, and at once on a
 *   node with no peers.
 * - `knownNearest` ranks every attached node (one shared table: each node
 *   knows them all) by distance to the key; ids that are not peer ids (plain
 *   names in most tests) keep the order they attached in.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { digestToCid, rankByDistance } from './key.js'
import {
  type AdvertiseOptions,
  type ContentRouter,
  DEFAULT_LOOKUP_LIMIT,
  type LookupOptions,
  NoPeersError,
  type PeerRef,
  RouterStoppedError
} from './types.js'

export interface MemoryRoutingTableOptions {
  /** simulated round trip of `advertise` and before the first `lookup` result, ms (default 0) */
  latencyMs?: number
  /** lookup deadline when the caller gives none, ms (default 2000, as the DHT router) */
  lookupTimeoutMs?: number
}

interface ProviderRecord {
  peer: PeerRef
  /** the announcing node withdrew it; removed by `expire()` */
  withdrawn: boolean
}

export class MemoryRoutingTable {
  readonly latencyMs: number
  readonly lookupTimeoutMs: number
  /** digest → peer id → record, in announcement order */
  private readonly records = new Map<string, Map<string, ProviderRecord>>()
  private readonly nodes = new Map<string, MemoryContentRouter>()

  constructor(options: MemoryRoutingTableOptions = {}) {
    this.latencyMs = options.latencyMs ?? 0
    this.lookupTimeoutMs = options.lookupTimeoutMs ?? 2_000
  }

  /** attach a fake node; attaching an id that is already online throws */
  attach(peer: PeerRef): MemoryContentRouter {
    if (this.nodes.has(peer.id)) throw new Error(`peer ${peer.id} is already attached`)
    const router = new MemoryContentRouter(this, { id: peer.id, addrs: [...peer.addrs] })
    this.nodes.set(peer.id, router)
    // a node joining fills the others' routing tables: pending announcements go out
    for (const node of this.nodes.values()) node.publishPending()
    return router
  }

  /** number of online nodes */
  get size(): number {
    return this.nodes.size
  }

  /** peers holding a record for the digest (stale ones included), for assertions */
  providers(digest: string): PeerRef[] {
    return [...(this.records.get(digest)?.values() ?? [])].map((r) => copyRef(r.peer))
  }

  /**
   * Simulate record expiry: drop withdrawn records and the records of nodes
   * that are no longer attached (for one digest, or all).
   */
  expire(digest?: string): void {
    const digests = digest === undefined ? [...this.records.keys()] : [digest]
    for (const d of digests) {
      const byPeer = this.records.get(d)
      if (byPeer === undefined) continue
      for (const [id, record] of byPeer) {
        if (record.withdrawn || !this.nodes.has(id)) byPeer.delete(id)
      }
      if (byPeer.size === 0) this.records.delete(d)
    }
  }

  /** @internal ids of the attached nodes, in attach order */
  nodeIds(): string[] {
    return [...this.nodes.keys()]
  }

  /** @internal */
  hasOtherNodes(id: string): boolean {
    return this.nodes.size > (this.nodes.has(id) ? 1 : 0)
  }

  /** @internal */
  store(digest: string, peer: PeerRef): void {
    let byPeer = this.records.get(digest)
    if (byPeer === undefined) {
      byPeer = new Map()
      this.records.set(digest, byPeer)
    }
    byPeer.set(peer.id, { peer, withdrawn: false })
  }

  /** @internal */
  markWithdrawn(digest: string, id: string): void {
    const record = this.records.get(digest)?.get(id)
    if (record !== undefined) record.withdrawn = true
  }

  /** @internal */
  snapshot(digest: string): PeerRef[] {
    return [...(this.records.get(digest)?.values() ?? [])].map((r) => r.peer)
  }

  /** @internal */
  detachNode(id: string, forget: boolean): void {
    this.nodes.delete(id)
    if (!forget) return
    for (const [digest, byPeer] of this.records) {
      byPeer.delete(id)
      if (byPeer.size === 0) this.records.delete(digest)
    }
  }
}

export class MemoryContentRouter implements ContentRouter {
  readonly peer: PeerRef
  private readonly table: MemoryRoutingTable
  /** digest → stored on the table at least once since it was (re-)advertised */
  private readonly schedule = new Map<string, boolean>()
  private attached = true

  /** use `MemoryRoutingTable.attach` */
  constructor(table: MemoryRoutingTable, peer: PeerRef) {
    this.table = table
    this.peer = peer
  }

  ready(): boolean {
    return this.attached && this.table.hasOtherNodes(this.peer.id)
  }

  async advertise(digest: string, options: AdvertiseOptions = {}): Promise<void> {
    digestToCid(digest) // same validation as the DHT router
    options.signal?.throwIfAborted()
    if (!this.attached) throw new RouterStoppedError()
    if (!this.schedule.has(digest)) this.schedule.set(digest, false)
    if (!this.ready()) throw new NoPeersError()
    if (this.table.latencyMs > 0) await sleep(this.table.latencyMs, undefined, { signal: options.signal })
    // withdrawn or detached while "on the wire"
    if (!this.attached) throw new RouterStoppedError()
    if (!this.schedule.has(digest)) return
    this.table.store(digest, this.peer)
    this.schedule.set(digest, true)
  }

  async withdraw(digest: string): Promise<void> {
    if (this.schedule.delete(digest)) this.table.markWithdrawn(digest, this.peer.id)
  }

  async *lookup(digest: string, options: LookupOptions = {}): AsyncIterable<PeerRef> {
    digestToCid(digest)
    const limit = options.limit ?? DEFAULT_LOOKUP_LIMIT
    if (limit <= 0 || !this.ready() || options.signal?.aborted === true) return
    const timeoutMs = options.timeoutMs ?? this.table.lookupTimeoutMs
    if (this.table.latencyMs > 0) {
      if (this.table.latencyMs >= timeoutMs) {
        // the deadline fires first: wait it out, as a slow DHT would
        await sleep(timeoutMs, undefined, { signal: options.signal }).catch(() => {})
        return
      }
      try {
        await sleep(this.table.latencyMs, undefined, { signal: options.signal })
      } catch {
        return
      }
    }
    const signal = options.signal
    let found = 0
    for (const peer of this.table.snapshot(digest)) {
      if (isAborted(signal)) return
      if (peer.id === this.peer.id || peer.addrs.length === 0) continue
      yield copyRef(peer)
      if (++found >= limit) return
    }
  }

  async knownNearest(digest: string, count: number): Promise<string[]> {
    digestToCid(digest)
    if (!this.attached) return [this.peer.id].slice(0, count)
    const ids = this.table.nodeIds()
    let ranked: string[]
    try {
      ranked = rankByDistance(digest, ids)
    } catch {
      ranked = ids // not peer ids: no distance to rank by
    }
    return ranked.slice(0, count)
  }

  /** digests this node announces (the re-announce schedule) */
  advertised(): string[] {
    return [...this.schedule.keys()]
  }

  /**
   * Take the node offline. Its records stay visible to others (stale) unless
   * `forget` is set; its own calls then fail or return nothing.
   */
  detach(options: { forget?: boolean } = {}): void {
    if (!this.attached) return
    this.attached = false
    this.table.detachNode(this.peer.id, options.forget === true)
  }

  /** @internal called by the table when a node attaches */
  publishPending(): void {
    if (!this.ready()) return
    for (const [digest, stored] of this.schedule) {
      if (!stored) {
        this.table.store(digest, this.peer)
        this.schedule.set(digest, true)
      }
    }
  }
}

function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true
}

function copyRef(peer: PeerRef): PeerRef {
  return { id: peer.id, addrs: [...peer.addrs] }
}
