import type { QueryEvent } from '@libp2p/kad-dht'
import type { PeerRef } from './types.js'

/** a peer as kad-dht's query events name it (a provider, or a closer peer) */
interface PeerInfoLike {
  id: { toString(): string }
  multiaddrs: ReadonlyArray<{ toString(): string }>
}

const P2P_SUFFIX = /\/p2p\/[^/]+$/

/** multiaddrs without the trailing /p2p/<id>, de-duplicated (PeerRef.addrs is transport only) */
export function transportAddrs(multiaddrs: ReadonlyArray<{ toString(): string }>): string[] {
  const out = new Set<string>()
  for (const ma of multiaddrs) {
    const addr = ma.toString().replace(P2P_SUFFIX, '')
    if (addr.length > 0) out.add(addr)
  }
  return [...out]
}

/**
 * One kad-dht providers walk for a digest, shared by everyone who wants it while it runs: the
 * lookup for providers and the query for the peers closest to the key (the origin-fetcher
 * candidates) are the same walk, since every GET_PROVIDERS answer also names the closest peers
 * its sender knows. Two walks per blob on every node was a third of a fan-out's DHT traffic.
 *
 * The walk runs until kad-dht ends it (converged, or enough providers found), its signal
 * aborts (the owner's deadline), or the last user left (`stop`).
 */
export class SharedWalk {
  /** providers with addresses, in the order found */
  readonly providers: PeerRef[] = []
  /** every peer the walk heard of (that answered, or was named in an answer), with the addresses heard */
  readonly heard = new Map<string, string[]>()
  /** resolves when the walk is over, however it ended (never rejects) */
  readonly done: Promise<void>
  /** why the walk failed, when kad-dht threw before the walk's signal aborted */
  error: unknown
  private readonly waiters = new Set<() => void>()
  private readonly providerIds = new Set<string>()
  private users = 0
  private over = false
  private stopped = false
  private ranToEnd = false

  /** `stop` aborts `signal` (the last user left) */
  constructor(
    walk: AsyncIterable<QueryEvent>,
    signal: AbortSignal,
    private readonly stop: () => void,
    private readonly selfId: string,
  ) {
    // the walk ends when its signal aborts even if kad-dht is stuck dialling a dead peer
    const aborted = new Promise<never>((_, reject) => {
      if (signal.aborted) reject(signal.reason)
      signal.addEventListener('abort', () => reject(signal.reason), { once: true })
    })
    aborted.catch(() => {})
    const events = walk[Symbol.asyncIterator]()
    this.done = (async () => {
      try {
        for (;;) {
          const next = await Promise.race([events.next(), aborted])
          if (next.done === true) break
          this.take(next.value)
        }
      } catch (err) {
        if (!signal.aborted) this.error = err
        events.return?.().catch(() => {})
      } finally {
        this.over = true
        this.ranToEnd = !this.stopped && !signal.aborted && this.error === undefined
        this.wake()
      }
    })()
  }

  get ended(): boolean {
    return this.over
  }

  /** over, and by kad-dht's own end (not cut by its deadline, stopped, or failed): its `heard` is what a whole walk finds */
  get complete(): boolean {
    return this.ranToEnd
  }

  /** still running and not being stopped: a new user may join */
  get joinable(): boolean {
    return !this.over && !this.stopped
  }

  /** one more user; the walk stops once every user has left */
  join(): void {
    this.users++
  }

  leave(): void {
    if (--this.users > 0) return
    this.stopped = true
    this.stop()
  }

  /** resolves at the walk's next news (a provider or a peer heard of) or its end */
  changed(): Promise<void> {
    if (this.over) return Promise.resolve()
    return new Promise((resolve) => this.waiters.add(resolve))
  }

  private take(event: QueryEvent): void {
    if (event.name === 'PEER_RESPONSE') {
      const from = event.from.toString()
      if (from !== this.selfId && !this.heard.has(from)) this.heard.set(from, [])
      for (const peer of event.closer) this.hear(peer)
      for (const peer of event.providers) this.hear(peer)
    } else if (event.name === 'PROVIDER') {
      for (const peer of event.providers) {
        this.hear(peer)
        const id = peer.id.toString()
        const addrs = transportAddrs(peer.multiaddrs)
        // kad-dht can report a provider without addresses (a local record, an empty peer
        // store); it may come back later with addresses
        if (id === this.selfId || this.providerIds.has(id) || addrs.length === 0) continue
        this.providerIds.add(id)
        this.providers.push({ id, addrs })
      }
    } else return
    this.wake()
  }

  private hear(peer: PeerInfoLike): void {
    const id = peer.id.toString()
    if (id === this.selfId) return
    const addrs = transportAddrs(peer.multiaddrs)
    if (addrs.length > 0 || !this.heard.has(id)) this.heard.set(id, addrs)
  }

  private wake(): void {
    for (const resolve of this.waiters) resolve()
    this.waiters.clear()
  }
}
