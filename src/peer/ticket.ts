/**
 * Server-side ticket book: which ticket (identity + key) was issued to which libp2p peer, until
 * when. Tickets live in memory only; a restart invalidates them all (clients fetch new ones on
 * their next 401 or failed handshake). Bounded: `maxPerPeer` live tickets per peer (the oldest
 * goes) and `maxTickets` overall, so a peer asking for tickets in a loop costs a bounded amount
 * of memory.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto'
import { TICKET_IDENTITY_BYTES, TICKET_KEY_BYTES } from './protocol.js'

export const DEFAULT_TICKET_TTL_MS = 10 * 60_000
export const DEFAULT_MAX_TICKETS_PER_PEER = 4
export const DEFAULT_MAX_TICKETS = 10_000

export interface Ticket {
  /** 32 hex characters: the PSK identity / the first half of the bearer token */
  readonly identity: string
  /** 32 random bytes: the PSK / the second half of the bearer token */
  readonly key: Buffer
  /** the libp2p peer the ticket was issued to (authenticated by Noise) */
  readonly peerId: string
  readonly tls: boolean
  /** ms on the book's clock */
  readonly expiresAt: number
}

export interface TicketBookOptions {
  ttlMs?: number
  maxPerPeer?: number
  maxTickets?: number
  /** ms clock (default Date.now) */
  now?: () => number
}

export class TicketBook {
  readonly ttlMs: number
  private readonly maxPerPeer: number
  private readonly maxTickets: number
  private readonly now: () => number
  /** insertion order = issue order: the first entries are the oldest */
  private readonly tickets = new Map<string, Ticket>()
  private readonly perPeer = new Map<string, string[]>()

  constructor(options: TicketBookOptions = {}) {
    this.ttlMs = options.ttlMs ?? DEFAULT_TICKET_TTL_MS
    this.maxPerPeer = Math.max(1, options.maxPerPeer ?? DEFAULT_MAX_TICKETS_PER_PEER)
    this.maxTickets = Math.max(1, options.maxTickets ?? DEFAULT_MAX_TICKETS)
    this.now = options.now ?? Date.now
  }

  get size(): number {
    return this.tickets.size
  }

  issue(peerId: string, tls: boolean): Ticket {
    this.sweep()
    const ticket: Ticket = {
      identity: randomBytes(TICKET_IDENTITY_BYTES).toString('hex'),
      key: randomBytes(TICKET_KEY_BYTES),
      peerId,
      tls,
      expiresAt: this.now() + this.ttlMs
    }
    const mine = this.perPeer.get(peerId) ?? []
    while (mine.length >= this.maxPerPeer) this.revoke(mine[0]!)
    while (this.tickets.size >= this.maxTickets) this.revoke(this.tickets.keys().next().value!)
    this.tickets.set(ticket.identity, ticket)
    const list = this.perPeer.get(peerId)
    if (list === undefined) this.perPeer.set(peerId, [ticket.identity])
    else list.push(ticket.identity)
    return ticket
  }

  /** the live ticket with this identity, or undefined (unknown or expired) */
  get(identity: string): Ticket | undefined {
    const ticket = this.tickets.get(identity)
    if (ticket === undefined) return undefined
    if (ticket.expiresAt <= this.now()) {
      this.revoke(identity)
      return undefined
    }
    return ticket
  }

  /** the live ticket for a bearer token (identity + key, key compared in constant time) */
  verifyBearer(identity: string, keyHex: string, tls: boolean): Ticket | undefined {
    const ticket = this.get(identity)
    if (ticket === undefined || ticket.tls !== tls) return undefined
    const presented = Buffer.from(keyHex, 'hex')
    if (presented.length !== ticket.key.length || !timingSafeEqual(presented, ticket.key)) return undefined
    return ticket
  }

  revoke(identity: string): void {
    const ticket = this.tickets.get(identity)
    if (ticket === undefined) return
    this.tickets.delete(identity)
    const list = this.perPeer.get(ticket.peerId)
    if (list === undefined) return
    const at = list.indexOf(identity)
    if (at >= 0) list.splice(at, 1)
    if (list.length === 0) this.perPeer.delete(ticket.peerId)
  }

  /** drop expired tickets (tickets expire in issue order, so this stops at the first live one) */
  sweep(): void {
    const now = this.now()
    for (const [identity, ticket] of this.tickets) {
      if (ticket.expiresAt > now) break
      this.revoke(identity)
    }
  }

  clear(): void {
    this.tickets.clear()
    this.perPeer.clear()
  }
}
