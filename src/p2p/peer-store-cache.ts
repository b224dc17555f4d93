import type { Peer, PeerData, PeerId, PeerStore } from '@libp2p/interface'

/** a cached peer is read from the store again after this long (its addresses age out there) */
const FRESH_MS = 10_000
/** peers cached at most (the oldest is forgotten first) */
const MAX_CACHED = 1024

interface Cached {
  peer: Peer
  at: number
  addrs: Set<string>
}

/**
 * Puts a read cache in front of libp2p's peer store, and drops merges that would change nothing.
 *
 * The store keeps each peer protobuf-encoded in a datastore: every `get` decodes it under a lock,
 * and every `merge` decodes, re-encodes and writes it. libp2p merges on every stream it opens or
 * accepts (the stream's protocol), kad-dht on every peer a DHT answer names (as a discovered
 * peer), and kad-dht reads a peer for each one it names in its own answers. In a 16-node
 * fan-out the peer store took 19% of all the daemons' samples in the round's first 20 s
 * (profiled, see `scripts/bench/HISTORY.md`); nearly all of those merges add nothing the
 * store does not hold.
 *
 * Every write of the store goes through the methods patched here (its own `consumePeerRecord`
 * and `getInfo` call them too), so a cached peer is never older than the last write through
 * this instance; it is also re-read after FRESH_MS, so the store's address expiry still applies.
 * A merge is dropped only when it names nothing but addresses and protocols the cached peer
 * already has: the store itself would write the same peer again and announce no update (it
 * keeps an address's first-observed time on a merge, so nothing ages differently).
 */
export function cachePeerStore(store: PeerStore, options: { freshMs?: number } = {}): void {
  const freshMs = options.freshMs ?? FRESH_MS
  const cache = new Map<string, Cached>()
  /** writes in flight per peer, and the sequence number of the last to begin */
  const writes = new Map<string, { inflight: number; last: number }>()
  let sequence = 0
  const get = store.get.bind(store)
  const merge = store.merge.bind(store)
  const patch = store.patch.bind(store)
  const save = store.save.bind(store)
  const del = store.delete.bind(store)

  const fresh = (key: string): Cached | undefined => {
    const entry = cache.get(key)
    if (entry === undefined || Date.now() - entry.at <= freshMs) return entry
    cache.delete(key)
    return undefined
  }
  const remember = (key: string, peer: Peer): void => {
    cache.set(key, { peer, at: Date.now(), addrs: new Set(peer.addresses.map((a) => a.multiaddr.toString())) })
    if (cache.size > MAX_CACHED) cache.delete(cache.keys().next().value as string)
  }
  /** runs a write: the cached peer goes at once; the peer it returns is cached only if no later write began meanwhile */
  const write = async <T extends Peer | undefined>(id: PeerId, run: () => Promise<T>): Promise<T> => {
    const key = id.toString()
    cache.delete(key)
    const w = writes.get(key) ?? { inflight: 0, last: 0 }
    writes.set(key, w)
    const mine = ++sequence
    w.inflight++
    w.last = mine
    let result: T | undefined
    try {
      result = await run()
      return result
    } finally {
      w.inflight--
      if (w.inflight === 0) writes.delete(key)
      if (result !== undefined && w.inflight === 0 && w.last === mine) remember(key, result)
    }
  }
  const changesNothing = (entry: Cached, data: PeerData): boolean => {
    for (const key of Object.keys(data) as (keyof PeerData)[]) {
      if (data[key] !== undefined && key !== 'multiaddrs' && key !== 'protocols') return false
    }
    return (
      (data.multiaddrs ?? []).every((ma) => entry.addrs.has(ma.toString())) &&
      (data.protocols ?? []).every((p) => entry.peer.protocols.includes(p))
    )
  }
  store.get = async (id, options) => {
    const key = id.toString()
    const cached = fresh(key)
    if (cached !== undefined) return cached.peer
    const peer = await get(id, options)
    // a write that began meanwhile may have changed it: that write caches its own result
    if (!writes.has(key) && !cache.has(key)) remember(key, peer)
    return peer
  }
  store.merge = async (id, data, options) => {
    const entry = fresh(id.toString())
    if (entry !== undefined && changesNothing(entry, data)) return entry.peer
    return write(id, () => merge(id, data, options))
  }
  store.patch = async (id, data, options) => write(id, () => patch(id, data, options))
  store.save = async (id, data, options) => write(id, () => save(id, data, options))
  store.delete = async (id, options) => {
    await write(id, async () => {
      await del(id, options)
      return undefined
    })
  }
}
