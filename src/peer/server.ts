/**
 * The serving side of the peer data plane: hands out tickets over libp2p
 * (`/shoal/data-ticket/1.0.0`) and serves blob info and chunk bytes over HTTP/1.1 on its own TCP
 * port, either inside TLS 1.2 PSK (encrypt: true, the default in config) or as plaintext with a
 * bearer token. See protocol.ts for the wire formats and why both modes authenticate the peer.
 *
 * Everything a peer sends is validated: the ticket (handshake or bearer, checked again on every
 * request, so an expired ticket stops working on a kept-alive connection), the method, the
 * path, the digest grammar, the chunk index against the blob's chunk count. Errors answer 4xx
 * (or 500 when the provider fails) and never take the server down.
 */
import { constants as cryptoConstants } from 'node:crypto'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Libp2p } from 'libp2p'
import type { Logger } from 'pino'
import { isDigest } from '../oci/digest.js'
import { PeerDataError } from './errors.js'
import { type Libp2pConnection, type Libp2pStream, readMessage, writeMessage } from './libp2p-io.js'
import {
  MAX_TICKET_MESSAGE_BYTES,
  PSK_CIPHERS,
  TICKET_PROTOCOL,
  TLS_VERSION,
  type InfoQuery,
  chunkCount,
  chunkLength,
  decodeTicketRequest,
  encodeInfo,
  encodeTicket,
  encodeTicketError,
  isSmallChunk,
  parseBearer,
  parsePath
} from './protocol.js'
import { DataPort, type Exchange } from './data-port.js'
import { TokenBucket } from './rate-limit.js'
import { type Ticket, TicketBook } from './ticket.js'
import type { BlobInfo, ChunkProvider, ChunkRead, PeerDataServer, PeerDataServerStats } from './types.js'
import { timeoutSignal } from '../util/abort.js'

/** TLS handshake, request head, idle connection (kept alive: clients drop theirs sooner, see client.ts) */
export const DEFAULT_SERVER_TIMEOUT_MS = 30_000
export const TICKET_EXCHANGE_TIMEOUT_MS = 5_000
export const MAX_TICKET_STREAMS = 32
export const MAX_DATA_CONNECTIONS = 512
const RETRY_AFTER_SECONDS = '1'
/** an info long poll (`held=`) answers after this at the latest: well within a client's request timeout */
export const LONG_POLL_MS = 4_000
/** why a long poll's wait ended (one error for all: it is never thrown, and building one per poll costs a stack trace) */
const LONG_POLL_OVER = new Error('long poll over')

export interface PeerDataServerOptions {
  libp2p: Libp2p
  provider: ChunkProvider
  /** TLS 1.2 PSK on the data port; false: plaintext HTTP with a bearer ticket (trusted networks) */
  encrypt: boolean
  listen: { host: string; port: number }
  /** concurrent chunk uploads (a chunk of at most a sixteenth of the chunk size takes none); more are answered 503 */
  maxUploads: number
  /** optional cap of chunk bytes per second over all uploads */
  uploadBytesPerSecond?: number
  logger: Logger
  /** ticket lifetime (default 10 min) */
  ticketTtlMs?: number
  /** TLS handshake, request headers, idle socket (default 30 s) */
  timeoutMs?: number
}

export async function createPeerDataServer(options: PeerDataServerOptions): Promise<PeerDataServer> {
  const server = new DataServer(options)
  await server.start()
  return server
}

class DataServer implements PeerDataServer {
  readonly encrypt: boolean
  private readonly libp2p: Libp2p
  private readonly provider: ChunkProvider
  private readonly log: Logger
  private readonly maxUploads: number
  private readonly bucket: TokenBucket | null
  private readonly book: TicketBook
  private readonly dataPort: DataPort
  private readonly listen: { host: string; port: number }
  /** the ticket identity each TLS socket authenticated with */
  private readonly tlsIdentity = new WeakMap<Socket, string>()
  private readonly closing = new AbortController()
  /** uploads holding one of the maxUploads slots (the small chunks take none) */
  private slotsInUse = 0
  private readonly counters = { uploads: 0, bytesSent: 0, uploadsTotal: 0, rejectedBusy: 0, rejectedUnauthorized: 0, ticketsIssued: 0, infoAnswered: 0, infoBytes: 0 }
  private boundPort = 0
  private closed: Promise<void> | undefined

  constructor(options: PeerDataServerOptions) {
    if (!Number.isInteger(options.maxUploads) || options.maxUploads < 1) throw new RangeError(`maxUploads must be a positive integer, got ${options.maxUploads}`)
    this.encrypt = options.encrypt
    this.libp2p = options.libp2p
    this.provider = options.provider
    this.log = options.logger.child({ component: 'peer-data-server' })
    this.maxUploads = options.maxUploads
    this.bucket = options.uploadBytesPerSecond === undefined ? null : new TokenBucket({ rate: options.uploadBytesPerSecond })
    this.book = new TicketBook(options.ticketTtlMs === undefined ? {} : { ttlMs: options.ticketTtlMs })
    this.listen = options.listen

    this.dataPort = new DataPort({
      tls: this.encrypt
        ? {
            ciphers: PSK_CIPHERS,
            minVersion: TLS_VERSION,
            maxVersion: TLS_VERSION,
            // no session resumption: a resumed session skips pskCallback, so the socket would carry
            // no ticket identity (and get 401). A PSK handshake is cheap (no public-key operations).
            secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
            pskCallback: (socket, identity) => this.pskFor(socket, identity)
          }
        : undefined,
      timeoutMs: options.timeoutMs ?? DEFAULT_SERVER_TIMEOUT_MS,
      maxConnections: MAX_DATA_CONNECTIONS,
      onRequest: (exchange) => this.onRequest(exchange),
      onBadPeer: (reason, code) => this.log.debug({ reason, code }, 'dropped a data connection'),
      onError: (err) => this.log.error({ err }, 'data server error')
    })
  }

  get port(): number {
    return this.boundPort
  }

  async start(): Promise<void> {
    try {
      this.boundPort = await this.dataPort.listen(this.listen.host, this.listen.port)
    } catch (err) {
      throw new PeerDataError(`cannot listen on ${this.listen.host}:${this.listen.port}`, 'ERR_PEER_DATA_LISTEN', { cause: err })
    }
    try {
      await this.libp2p.handle(TICKET_PROTOCOL, (stream, connection) => this.onTicketStream(stream, connection), {
        maxInboundStreams: MAX_TICKET_STREAMS
      })
    } catch (err) {
      await this.dataPort.close()
      throw new PeerDataError(`cannot register ${TICKET_PROTOCOL}`, 'ERR_PEER_DATA_PROTOCOL', { cause: err })
    }
    this.log.info({ port: this.boundPort, host: this.listen.host, encrypt: this.encrypt, maxUploads: this.maxUploads, uploadBytesPerSecond: this.bucket?.rate }, 'peer data server listening')
  }

  stats(): PeerDataServerStats {
    this.book.sweep()
    return { ...this.counters, tickets: this.book.size }
  }

  close(): Promise<void> {
    this.closed ??= (async () => {
      this.closing.abort()
      await this.libp2p.unhandle(TICKET_PROTOCOL).catch((err: unknown) => this.log.debug({ err }, 'unhandle failed'))
      await this.dataPort.close()
      this.book.clear()
      this.log.info({ ...this.counters }, 'peer data server closed')
    })()
    return this.closed
  }

  // ------------------------------------------------------------ tickets over libp2p

  private onTicketStream(stream: Libp2pStream, connection: Libp2pConnection): void {
    const peerId = connection.remotePeer.toString()
    const signal = timeoutSignal(TICKET_EXCHANGE_TIMEOUT_MS, this.closing.signal)
    // read at once: a handler that awaits something else first can lose the stream
    readMessage(stream, MAX_TICKET_MESSAGE_BYTES, signal)
      .then(async (request) => {
        try {
          decodeTicketRequest(request)
        } catch (err) {
          this.log.debug({ peerId, err }, 'bad ticket request')
          await writeMessage(stream, encodeTicketError('bad request'), signal)
          return
        }
        const ticket = this.book.issue(peerId, this.encrypt)
        this.counters.ticketsIssued++
        await writeMessage(
          stream,
          encodeTicket({ tls: ticket.tls, port: this.boundPort, identity: ticket.identity, key: ticket.key.toString('hex'), ttlMs: this.book.ttlMs, known: true }),
          signal
        )
        this.log.debug({ peerId, identity: ticket.identity }, 'issued data ticket')
      })
      .catch((err: unknown) => {
        this.log.debug({ peerId, err }, 'ticket exchange failed')
        stream.abort(err instanceof Error ? err : new Error(String(err)))
      })
  }

  private pskFor(socket: TLSSocket, identity: string): Buffer | null {
    const ticket = this.book.get(identity)
    if (ticket === undefined || !ticket.tls) {
      this.counters.rejectedUnauthorized++
      return null // handshake fails: a stranger learns nothing, not even the routes
    }
    this.tlsIdentity.set(socket, identity)
    return ticket.key
  }

  private ticketOf(exchange: Exchange): Ticket | undefined {
    if (this.encrypt) {
      const identity = this.tlsIdentity.get(exchange.socket)
      return identity === undefined ? undefined : this.book.get(identity)
    }
    const bearer = parseBearer(exchange.authorization)
    return bearer === undefined ? undefined : this.book.verifyBearer(bearer.identity, bearer.key, false)
  }

  // ------------------------------------------------------------ HTTP

  private onRequest(exchange: Exchange): void {
    const ticket = this.ticketOf(exchange)
    if (ticket === undefined) {
      this.counters.rejectedUnauthorized++
      exchange.fail(401, 'no valid ticket', '', true)
      return
    }
    if (exchange.method !== 'GET') {
      exchange.fail(405, 'only GET', 'allow: GET\r\n', true)
      return
    }
    const parsed = parsePath(exchange.target)
    if (parsed === undefined) {
      exchange.fail(404, 'no such route')
      return
    }
    if (!isDigest(parsed.digest)) {
      exchange.fail(400, 'invalid digest')
      return
    }
    // the fields of the request's log lines (a child logger per request showed in fan-out profiles)
    const about: RequestLog = { log: this.log, peerId: ticket.peerId, digest: parsed.digest }
    if (parsed.kind === 'info') {
      if (parsed.want !== undefined) this.provider.want?.(parsed.digest, parsed.want, ticket.peerId)
      this.serveInfo(parsed.digest, parsed, exchange, about).catch((err: unknown) => providerFailed(exchange, about, err))
      return
    }
    this.serveChunk(parsed.digest, parsed.index, exchange, about).catch((err: unknown) => providerFailed(exchange, about, err))
  }

  private async serveInfo(digest: string, { held, want, known }: InfoQuery, exchange: Exchange, { log, peerId: asker }: RequestLog): Promise<void> {
    let info: BlobInfo | undefined
    if (held === undefined) {
      // an asker choosing its origin fetchers (only it pays for the peers near the blob's key)
      info = want !== undefined && this.provider.wantInfo !== undefined ? await this.provider.wantInfo(digest, asker) : await this.provider.info(digest, undefined, asker)
    } else {
      // a long poll: ends after LONG_POLL_MS, or early when the requester goes away (the
      // exchange's signal, and a timer: a composite signal per poll showed in profiles of a fan-out)
      const timer = setTimeout(() => exchange.abort(LONG_POLL_OVER), LONG_POLL_MS)
      try {
        info = await this.provider.info(digest, { held, signal: exchange.signal }, asker)
      } finally {
        clearTimeout(timer)
      }
    }
    if (info === undefined) {
      exchange.fail(404, 'blob unknown')
      return
    }
    const body = encodeInfo(info, known) // (checks what it writes: a provider's bug answers 500, it does not reach the peer)
    this.counters.infoAnswered++
    this.counters.infoBytes += body.length
    log.trace({ peerId: asker, digest }, 'served info')
    exchange.reply(200, 'application/json', body)
  }

  private async serveChunk(digest: string, index: number, exchange: Exchange, { log, peerId }: RequestLog): Promise<void> {
    // (no holdings answer per chunk: the read finds out whether the chunk is held)
    const layout = this.provider.layout(digest)
    if (layout === undefined) {
      exchange.fail(404, 'blob unknown')
      return
    }
    if (index >= chunkCount(layout.size, layout.chunkSize)) {
      exchange.fail(416, 'chunk index out of range')
      return
    }
    // A chunk of at most a sixteenth of the chunk size takes no upload slot: it barely shares
    // the uplink, and such blobs (image configs) are asked for by the whole fleet at once, where
    // 503s and their 1 s rests held each node up for seconds over 504 bytes.
    const slot = !isSmallChunk(chunkLength(layout, index), layout.chunkSize)
    if (slot && this.slotsInUse >= this.maxUploads) {
      this.counters.rejectedBusy++
      exchange.fail(503, 'upload cap reached', `retry-after: ${RETRY_AFTER_SECONDS}\r\n`)
      return
    }
    if (slot) this.slotsInUse++
    this.counters.uploads++
    this.counters.uploadsTotal++
    const ended = (): void => {
      this.counters.uploads--
      if (slot) this.slotsInUse--
    }
    let chunk: ChunkRead | undefined
    try {
      chunk = await this.provider.read(digest, index, exchange.signal)
    } finally {
      if (chunk === undefined) ended() // (no upload: not held, or the read failed)
    }
    if (chunk === undefined) {
      exchange.fail(404, 'chunk not held')
      return
    }
    const { bytes, release } = chunk
    // the slot and the chunk's memory are free again once nothing writes from it
    exchange.send('application/octet-stream', bytes, this.bucket, (err) => {
      ended()
      release?.()
      if (err === null) {
        this.counters.bytesSent += bytes.length
        log.trace({ peerId, digest, index, bytes: bytes.length }, 'served chunk')
      } else log.debug({ peerId, digest, index }, 'peer hung up mid-chunk') // cancellation, not an error
    })
  }
}

/** the server's logger and the fields of one request's log lines */
interface RequestLog {
  log: Logger
  peerId: string
  digest: string
}

function providerFailed(exchange: Exchange, { log, peerId, digest }: RequestLog, err: unknown): void {
  // a requester that hung up (a hedge it no longer needs) aborted the read: not an error
  if (exchange.gone) {
    log.debug({ peerId, digest, err: (err as Error)?.message }, 'requester gone before the answer')
    return
  }
  log.error({ peerId, digest, err }, 'chunk provider failed')
  exchange.fail(500, 'internal error')
}
