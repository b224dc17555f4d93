/** free chunks at the front of a share that only its own fetcher takes (see `next`) */
const STEAL_MARGIN = 3

/**
 * Which node fetches which chunk of a blob from origin, agreed without a coordinator.
 *
 * Every node that wants a blob nobody holds asks the DHT for the peers closest to the blob's
 * key and ranks them (itself included) by XOR distance: the first few are the blob's origin
 * fetchers, and chunk i belongs to fetcher i mod n. Each node computes the same ranking from
 * the same DHT, so the fleet fetches each chunk from origin about once; everyone else takes the
 * chunks from the fetchers, and from each other, as they land.
 *
 * The ranking a node starts with is the one its closest-peers query gave; the asks that follow
 * (dead candidates passed over, nearer nodes that the asked ones name) may settle another, which
 * replaces it (`rank`). A fetcher that dies or stalls is dropped from the ranking by whoever
 * notices; its chunks fall to the next alive fetchers. A node that sees no alive fetcher but
 * itself fetches everything. A fetcher ahead of another takes chunks from the end of the other's
 * share (`next`).
 */
export class OriginStripes {
  readonly self: string
  private readonly alive: string[]
  /** free chunks left in each share (reused: `next` runs on every pump of a download's scheduler) */
  private left = new Int32Array(0)

  /** `fetchers`: peer ids in rank order (closest first), possibly including `self` */
  constructor(fetchers: readonly string[], self: string) {
    this.self = self
    this.alive = [...new Set(fetchers)]
  }

  /** the fetcher in charge of chunk `index`; undefined when none is left */
  owner(index: number): string | undefined {
    return this.alive.length === 0 ? undefined : this.alive[index % this.alive.length]
  }

  /** whether this node fetches chunk `index` from origin */
  mine(index: number): boolean {
    const owner = this.owner(index)
    return owner === undefined || owner === this.self
  }

  /**
   * The chunk this node fetches from origin next, among those `free` (no known source holds it
   * and this node has it not in flight): the first of its own share, unless another fetcher's
   * share has more than STEAL_MARGIN free chunks more than its own, and then one from that
   * share's end (work stealing). A fetcher's origin requests can stall for seconds, one flow
   * among many at a congested origin (in 4-node rounds, origin's log showed a fetcher complete
   * no request for 6 s while the other three completed 1-2 a second); its share then lags, its
   * uplink idles, and origin ends at half its rate while that fetcher finishes alone. Stealing
   * keeps the shares level. A fetcher goes through its share first to last, so a share is taken
   * from its end, and only where STEAL_MARGIN free chunks of it come before (its fetcher's
   * requests in flight, and chunks this node has not heard it holds, are among those). The
   * share's m-th chunk is for the k-th of the other fetchers (by rank) when m ≡ k (mod their
   * number): a stealer does not see what another has in flight, and they would take the same.
   */
  next(count: number, free: (index: number) => boolean): number | undefined {
    const n = this.alive.length
    const selfAt = this.alive.indexOf(this.self)
    if (n === 0) return firstFree(count, free)
    if (selfAt === -1) return undefined
    if (this.left.length !== n) this.left = new Int32Array(n)
    const left = this.left.fill(0)
    let own: number | undefined
    for (let i = 0; i < count; i++) {
      if (!free(i)) continue
      const share = i % n
      ;(left[share] as number)++
      if (share === selfAt) own ??= i
    }
    const mine = left[selfAt] as number
    // the other shares, those with the most free chunks first (ties in rank order); one tried is marked -1
    for (let round = 1; round < n; round++) {
      let share = -1
      for (let p = 0; p < n; p++) if (p !== selfAt && (left[p] as number) >= 0 && (share === -1 || (left[p] as number) > (left[share] as number))) share = p
      let before = left[share] as number
      left[share] = -1
      if (before <= mine + STEAL_MARGIN) break
      const k = selfAt < share ? selfAt : selfAt - 1
      for (let i = share + n * Math.floor((count - 1 - share) / n); i >= 0; i -= n) {
        if (!free(i)) continue
        before--
        if (before < STEAL_MARGIN) break
        if (Math.floor(i / n) % (n - 1) === k) return i
      }
    }
    return own
  }

  /** the ranking the asks settled replaces the one begun with (`fetchers` as for the constructor) */
  rank(fetchers: readonly string[]): void {
    this.alive.splice(0, this.alive.length, ...new Set(fetchers))
  }

  /** fetchers other than this node still counted on */
  others(): string[] {
    return this.alive.filter((id) => id !== this.self)
  }

  /** drops a fetcher that died or stalled; true if it was counted on */
  drop(id: string): boolean {
    const i = this.alive.indexOf(id)
    if (i === -1 || id === this.self) return false
    this.alive.splice(i, 1)
    return true
  }
}

function firstFree(count: number, free: (index: number) => boolean): number | undefined {
  for (let i = 0; i < count; i++) if (free(i)) return i
  return undefined
}
