/**
 * The requesting side of the peer data plane. Per peer it holds one session: a ticket fetched
 * over libp2p (Noise-authenticated, so the ticket comes from the peer id we asked for) and
 * kept-alive sockets to the peer's data port, some for chunks and some for infos (DataChannel).
 * Sessions are reused until shortly before the ticket expires, then replaced; a 401 or a failed
 * handshake (the peer restarted and forgot its tickets) fetches a new ticket and retries once.
 *
 * Bytes are never verified here: `fetchChunk` hands over the raw body and the caller checks it
 * against the chunk table.
 */
import { setMaxListeners } from 'node:events'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { Libp2p } from 'libp2p'
import type { Logger } from 'pino'
import { isDigest } from '../oci/digest.js'
import type { PeerRef } from '../routing/types.js'
import { abortable, timeoutSignal } from '../util/abort.js'
import {
  ChunkUnavailableError,
  PeerBusyError,
  PeerDataArgumentError,
  PeerDataClosedError,
  PeerDataError,
  PeerHttpError,
  PeerPolicyError,
  PeerProtocolError,
  PeerTimeoutError,
  PeerUnreachableError
} from './errors.js'
import { DataChannel, type DataResponse } from './data-channel.js'
import { type Libp2pConnection, connectionHost, readMessage, writeMessage } from './libp2p-io.js'
import {
  MAX_INFO_BYTES,
  MAX_TICKET_MESSAGE_BYTES,
  TICKET_PROTOCOL,
  type InfoQuery,
  type TicketWire,
  bearerToken,
  blobPath,
  chunkPath,
  decodeInfo,
  decodeTicket,
  encodeTicketRequest,
  sentKnown
} from './protocol.js'
import type { TokenBucket } from './rate-limit.js'
import type { BlobInfo, PeerDataClientStats } from './types.js'

export const DEFAULT_MAX_SOCKETS_PER_PEER = 8
/** info requests in flight to one peer at most (one long poll per blob being fetched from it) */
const INFO_SOCKETS_PER_PEER = 8
/** idle kept-alive sockets close after this, before the server's 30 s, so we never reuse one the server is closing */
export const CLIENT_FREE_SOCKET_TIMEOUT_MS = 20_000
/** a ticket is replaced this long before it expires (at most a fifth of its lifetime) */
export const TICKET_REFRESH_MARGIN_MS = 60_000
/**
 * An info request's own bound on connecting and on the answer (callers bound it further with
 * their signal): a long poll waits on the peer, and on a congested link a new connection alone
 * may take longer than the data timeout — cut there, every ask started over on a new connection
 * and a busy origin fetcher never answered at all.
 */
const INFO_WAIT_MS = 30_000
/** how often the tickets of connected peers are looked at, and fetched again when about to expire (`warm`) */
const WARM_INTERVAL_MS = 120_000
/** a busy peer (503) that did not say when to come back is asked again after this */
const DEFAULT_BUSY_RETRY_MS = 1_000

export interface PeerDataClientOptions {
  libp2p: Libp2p
  /** refuse peers that offer only plaintext */
  encrypt: boolean
  logger: Logger
  /** ticket exchange (dial + stream), connect + response headers, and idle body, each */
  timeoutMs: number
  maxSocketsPerPeer?: number
  /** a cap on chunk bytes received per second, shared with whatever else takes from this bucket */
  downloadBucket?: TokenBucket
  /**
   * Keep a ticket from every connected peer that serves the data plane (libp2p's identify names
   * the ticket protocol), fetched when it connects and again before it expires, so that the
   * first request of a pull to a peer does not wait for a ticket exchange over libp2p (in a
   * fan-out on a fresh swarm, every node's first asks to its origin fetchers did, while every
   * node was busiest). Default false.
   */
  warm?: boolean
  /** ms clock (default Date.now) */
  now?: () => number
}

export interface PeerDataClient {
  /**
   * The peer's view of a blob; undefined when it holds nothing of it. `want` (`registry/name`):
   * also ask the peer to fetch the blob, as one of its origin fetchers; `held`: a long poll, the
   * peer answers once it holds more chunks than that (or after LONG_POLL_MS). `waitMs`: the
   * most the answer may take (default the larger of 30 s and `timeoutMs`), bounded further by `signal`.
   */
  info(peer: PeerRef, digest: string, options: { signal: AbortSignal; waitMs?: number | undefined } & InfoQuery): Promise<BlobInfo | undefined>
  /**
   * Receives the raw bytes of chunk `index` into `into`, whose length is the chunk's (unverified:
   * the caller checks them). Rejects with `ChunkUnavailableError` (not held), `PeerBusyError`
   * (upload cap), `PeerTimeoutError` (no answer, or the connection idled past `timeoutMs`),
   * `PeerUnreachableError`, `PeerProtocolError` (a length other than `into`'s among others),
   * `PeerPolicyError`, an Error when the connection fails mid-chunk, or the signal's reason.
   */
  fetchChunk(peer: PeerRef, digest: string, index: number, options: { signal: AbortSignal; into: Buffer }): Promise<void>
  /**
   * Gets a ticket from a connected peer ahead of need (unless a fresh one is held), so that the
   * first request to it does not wait for one; rejects as a request would.
   */
  prepare(peerId: string): Promise<void>
  stats(): PeerDataClientStats
  close(): Promise<void>
}

interface Session {
  readonly peerId: string
  /** chunk requests: at most maxSocketsPerPeer at once */
  readonly chunks: DataChannel
  /**
   * info requests (long polls) on sockets of their own: behind chunks on a congested link they
   * would wait for a socket as long as a chunk takes, and the peer would look silent
   */
  readonly infos: DataChannel
  /** local ms after which a new ticket is fetched */
  readonly refreshAt: number
  /** the peer takes `known` on info requests (its ticket said so) */
  readonly known: boolean
}

interface PeerState {
  session: Session | undefined
  pending: Promise<Session> | undefined
}

export function createPeerDataClient(options: PeerDataClientOptions): PeerDataClient {
  return new DataClient(options)
}

class DataClient implements PeerDataClient {
  private readonly libp2p: Libp2p
  private readonly encrypt: boolean
  private readonly log: Logger
  private readonly timeoutMs: number
  private readonly infoWaitMs: number
  private readonly maxSockets: number
  private readonly bucket: TokenBucket | undefined
  private readonly now: () => number
  private readonly shutdown = new AbortController()
  private readonly peers = new Map<string, PeerState>()
  private readonly counters = { bytesReceived: 0, chunksFetched: 0, ticketsFetched: 0 }
  /** connected peers whose tickets are kept (`warm`) */
  private readonly serving = new Set<string>()

  constructor(options: PeerDataClientOptions) {
    this.libp2p = options.libp2p
    this.encrypt = options.encrypt
    this.log = options.logger.child({ component: 'peer-data-client' })
    this.timeoutMs = options.timeoutMs
    this.maxSockets = options.maxSocketsPerPeer ?? DEFAULT_MAX_SOCKETS_PER_PEER
    this.bucket = options.downloadBucket
    this.now = options.now ?? Date.now
    this.infoWaitMs = Math.max(INFO_WAIT_MS, this.timeoutMs)
    // one listener per request in flight
    setMaxListeners(Number.POSITIVE_INFINITY, this.shutdown.signal)
    if (options.warm === true) this.keepWarm()
  }

  private keepWarm(): void {
    const { signal } = this.shutdown
    const warm = (peerId: string): void => {
      this.prepare(peerId).catch((err: Error) => this.log.debug({ peerId, err: err.message }, 'no data ticket ahead of need'))
    }
    this.libp2p.addEventListener(
      'peer:identify',
      (evt) => {
        if (!evt.detail.protocols.includes(TICKET_PROTOCOL)) return
        const peerId = evt.detail.peerId.toString()
        this.serving.add(peerId)
        warm(peerId)
      },
      { signal },
    )
    this.libp2p.addEventListener('peer:disconnect', (evt) => this.serving.delete(evt.detail.toString()), { signal })
    const timer = setInterval(() => {
      for (const peerId of this.serving) warm(peerId)
    }, WARM_INTERVAL_MS).unref()
    signal.addEventListener('abort', () => clearInterval(timer), { once: true })
  }

  async info(peer: PeerRef, digest: string, options: { signal: AbortSignal; waitMs?: number | undefined } & InfoQuery): Promise<BlobInfo | undefined> {
    if (!isDigest(digest)) throw new PeerDataArgumentError(`invalid digest ${JSON.stringify(digest.slice(0, 100))}`)
    const { signal, want, held } = options
    const waitMs = options.waitMs ?? this.infoWaitMs
    /** the chunks named known to the peer (only to one that takes them): the answer may leave out their hashes */
    let known: Uint8Array | undefined
    const res = await this.send(peer, signal, (session) => {
      known = session.known ? sentKnown(options.known) : undefined
      return session.infos.request({ path: blobPath(digest, { want, held, known }), signal, waitMs, maxBody: MAX_INFO_BYTES })
    })
    if (res.status === 404) return undefined
    if (res.status !== 200) throw httpError(peer.id, res)
    try {
      return decodeInfo((res.body as Buffer).toString('utf8'), known)
    } catch (err) {
      throw new PeerProtocolError(`peer ${peer.id} sent an invalid info for ${digest}`, { cause: err })
    }
  }

  async fetchChunk(peer: PeerRef, digest: string, index: number, options: { signal: AbortSignal; into: Buffer }): Promise<void> {
    if (!isDigest(digest)) throw new PeerDataArgumentError(`invalid digest ${JSON.stringify(digest.slice(0, 100))}`)
    if (!Number.isSafeInteger(index) || index < 0) throw new PeerDataArgumentError(`invalid chunk index ${index}`)
    const path = chunkPath(digest, index)
    const { signal, into } = options
    // the node's download cap: a chunk is paid for before it is asked for, since a peer sends
    // the whole chunk at once (see TokenBucket.take); an answer without it gives the bytes back
    await this.bucket?.take(into.length, signal)
    const res = await this.send(peer, signal, (session) => session.chunks.request({ path, into, signal, waitMs: this.timeoutMs }))
    if (res.status !== 200) this.bucket?.refund(into.length)
    switch (res.status) {
      case 200:
        this.counters.chunksFetched++
        this.counters.bytesReceived += into.length
        return
      case 404:
        throw new ChunkUnavailableError(peer.id, digest, index)
      case 503: {
        const seconds = Number(res.headers.get('retry-after'))
        throw new PeerBusyError(peer.id, Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : DEFAULT_BUSY_RETRY_MS)
      }
      default:
        throw httpError(peer.id, res)
    }
  }

  async prepare(peerId: string): Promise<void> {
    await this.session({ id: peerId, addrs: [] }, timeoutSignal(this.timeoutMs, this.shutdown.signal))
  }

  stats(): PeerDataClientStats {
    return { ...this.counters }
  }

  async close(): Promise<void> {
    this.shutdown.abort(new PeerDataClosedError('peer data client'))
    for (const state of this.peers.values()) if (state.session !== undefined) destroy(state.session, this.shutdown.signal.reason as Error)
    this.peers.clear()
  }

  // ------------------------------------------------------------ sessions (tickets)

  private async session(peer: PeerRef, signal: AbortSignal): Promise<Session> {
    this.shutdown.signal.throwIfAborted()
    let state = this.peers.get(peer.id)
    if (state === undefined) {
      state = { session: undefined, pending: undefined }
      this.peers.set(peer.id, state)
    }
    if (state.session !== undefined && this.now() < state.session.refreshAt) return state.session
    if (state.pending === undefined) {
      const current = state
      // shared by every caller: bound by the client's shutdown and the timeout, not by the first caller's signal
      const pending = this.openSession(peer).then(
        (session) => {
          if (current.pending === pending) current.pending = undefined
          if (this.shutdown.signal.aborted) {
            destroy(session, this.shutdown.signal.reason as Error)
            throw this.shutdown.signal.reason
          }
          if (current.session !== undefined) retire(current.session)
          current.session = session
          return session
        },
        (err: unknown) => {
          if (current.pending === pending) current.pending = undefined
          throw err
        }
      )
      pending.catch(() => {}) // a caller that aborted no longer listens
      state.pending = pending
    }
    return abortable(state.pending, signal)
  }

  /** forget a session that the peer no longer accepts */
  private invalidate(peerId: string, session: Session): void {
    const state = this.peers.get(peerId)
    if (state?.session !== session) return
    state.session = undefined
    retire(session)
  }

  private async openSession(peer: PeerRef): Promise<Session> {
    const started = this.now()
    const signal = timeoutSignal(this.timeoutMs, this.shutdown.signal)
    let ticket: TicketWire
    let host: string | undefined
    let connected = false
    try {
      const connection = await this.connect(peer, signal)
      connected = true
      host = connectionHost(connection)
      const stream = await connection.newStream(TICKET_PROTOCOL, { signal })
      await writeMessage(stream, encodeTicketRequest(), signal)
      const bytes = await readMessage(stream, MAX_TICKET_MESSAGE_BYTES, signal)
      try {
        ticket = decodeTicket(bytes)
      } catch (err) {
        throw new PeerProtocolError(`peer ${peer.id} sent an invalid ticket`, { cause: err })
      }
    } catch (err) {
      if (err instanceof PeerDataError) throw err
      if (this.shutdown.signal.aborted) throw this.shutdown.signal.reason
      if (signal.aborted) throw new PeerTimeoutError(`no data ticket from ${peer.id} within ${this.timeoutMs} ms`, { cause: err })
      throw new PeerUnreachableError(`cannot get a data ticket from ${peer.id}`, { cause: err, refused: !connected })
    }
    if (host === undefined) throw new PeerUnreachableError(`peer ${peer.id} is connected over a non-IP address; no data port to reach`)
    if (this.encrypt && !ticket.tls) throw new PeerPolicyError(`peer ${peer.id} serves plaintext only and this node requires encryption`)
    this.counters.ticketsFetched++
    const channel = (maxSockets: number): DataChannel =>
      new DataChannel({
        peerId: peer.id,
        host,
        port: ticket.port,
        psk: ticket.tls ? { key: Buffer.from(ticket.key, 'hex'), identity: ticket.identity } : undefined,
        headers: ticket.tls ? {} : { authorization: bearerToken(ticket.identity, ticket.key) },
        maxSockets,
        idleMs: CLIENT_FREE_SOCKET_TIMEOUT_MS
      })
    const refreshAt = started + ticket.ttlMs - Math.min(TICKET_REFRESH_MARGIN_MS, ticket.ttlMs / 5)
    this.log.debug({ peerId: peer.id, host, port: ticket.port, tls: ticket.tls }, 'got data ticket')
    return { peerId: peer.id, chunks: channel(this.maxSockets), infos: channel(INFO_SOCKETS_PER_PEER), refreshAt, known: ticket.known === true }
  }

  /** an open libp2p connection to the peer, authenticated as peer.id */
  private async connect(peer: PeerRef, signal: AbortSignal): Promise<Libp2pConnection> {
    let peerId: ReturnType<typeof peerIdFromString>
    try {
      peerId = peerIdFromString(peer.id)
    } catch (err) {
      throw new PeerDataArgumentError(`invalid peer id ${JSON.stringify(peer.id.slice(0, 100))}`, { cause: err })
    }
    const open = this.libp2p.getConnections(peerId).find((c) => c.status === 'open')
    const connection =
      open ??
      (await this.libp2p.dial(
        peer.addrs.length > 0 ? peer.addrs.map((addr) => multiaddr(`${addr}/p2p/${peer.id}`)) : peerId,
        { signal }
      ))
    // Noise proved the remote's key; this check ties it to the peer we meant
    if (!connection.remotePeer.equals(peerId)) throw new PeerProtocolError(`dialled ${peer.id} but reached ${connection.remotePeer.toString()}`)
    return connection
  }

  // ------------------------------------------------------------ HTTP

  /**
   * One request with the peer's session, sent again once with a fresh ticket when the connection
   * failed (the peer restarted and forgot its tickets, or a kept-alive socket went stale) or the
   * peer answered 401.
   */
  private async send(peer: PeerRef, signal: AbortSignal, request: (session: Session) => Promise<DataResponse>): Promise<DataResponse> {
    for (let attempt = 0; ; attempt++) {
      const session = await this.session(peer, signal)
      let res: DataResponse
      try {
        res = await request(session)
      } catch (err) {
        if (attempt > 0 || !(err instanceof PeerUnreachableError)) throw err
        this.log.debug({ peerId: peer.id, err }, 'data connection failed; retrying with a new ticket')
        this.invalidate(peer.id, session)
        continue
      }
      if (res.status === 401 && attempt === 0) {
        this.invalidate(peer.id, session)
        continue
      }
      return res
    }
  }
}

/** stop reusing a session's sockets; requests in flight finish, then their sockets close */
function retire(session: Session): void {
  session.chunks.retire()
  session.infos.retire()
}

function destroy(session: Session, reason: Error): void {
  session.chunks.destroy(reason)
  session.infos.destroy(reason)
}

/** an answer other than those the caller expects, with the `message` of its JSON body if it has one */
function httpError(peerId: string, res: DataResponse): PeerHttpError {
  let detail = ''
  try {
    const parsed = JSON.parse(res.body?.toString('utf8') ?? '') as { message?: unknown }
    if (typeof parsed.message === 'string') detail = parsed.message.slice(0, 200)
  } catch {
    // the detail is optional
  }
  return new PeerHttpError(peerId, res.status, detail)
}
