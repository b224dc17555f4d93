/**
 * Which node fetches which chunk of a blob from origin, agreed without a coordinator.
 *
 * Every node that wants a blob nobody holds asks the DHT for the peers closest to the blob's
 * key and ranks them (itself included) by XOR distance: the first few are the blob's origin
 * fetchers, and chunk i belongs to fetcher i mod n. Each node computes the same ranking from
 * the same DHT, so the fleet fetches each chunk from origin about once; everyone else takes the
 * chunks from the fetchers, and from each other, as they land.
 *
 * A fetcher that dies or stalls is dropped from the ranking by whoever notices; its chunks fall
 * to the next alive fetchers. A node that sees no alive fetcher but itself fetches everything.
 */
export class OriginStripes {
  readonly self: string
  private readonly alive: string[]

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
