/** Peers that misbehaved (sent bytes that failed verification), kept out for a while. */
export class PeerPenalties {
  private readonly until = new Map<string, number>()
  private readonly durationMs: number
  private readonly now: () => number

  constructor(durationMs: number, now: () => number = Date.now) {
    this.durationMs = durationMs
    this.now = now
  }

  penalise(peerId: string): void {
    this.until.set(peerId, this.now() + this.durationMs)
  }

  isPenalised(peerId: string): boolean {
    const t = this.until.get(peerId)
    if (t === undefined) return false
    if (t > this.now()) return true
    this.until.delete(peerId)
    return false
  }

  count(): number {
    for (const id of [...this.until.keys()]) this.isPenalised(id)
    return this.until.size
  }
}
