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
import { type IncomingMessage, type Server, type ServerResponse, STATUS_CODES, createServer as createHttpServer } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { Socket } from 'node:net'
import { constants as cryptoConstants } from 'node:crypto'
import { pipeline } from 'node:stream'
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
  decodeTicketRequest,
  encodeInfo,
  encodeTicket,
  encodeTicketError,
  parseBearer,
  parsePath
} from './protocol.js'
import { ThrottleStream, TokenBucket } from './rate-limit.js'
import { type Ticket, TicketBook } from './ticket.js'
import type { BlobInfo, ChunkProvider, PeerDataServer, PeerDataServerStats } from './types.js'
import { timeoutSignal } from '../util/abort.js'

export const DEFAULT_SERVER_TIMEOUT_MS = 30_000
/** kept-alive idle connections close after this; clients drop theirs sooner (see client.ts) */
export const SERVER_KEEP_ALIVE_TIMEOUT_MS = 30_000
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
  /** concurrent chunk uploads; more are answered 503 */
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
  private readonly http: Server
  private readonly listen: { host: string; port: number }
  private readonly timeoutMs: number
  /** the ticket identity each TLS socket authenticated with */
  private readonly tlsIdentity = new WeakMap<Socket, string>()
  private readonly closing = new AbortController()
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
    this.timeoutMs = options.timeoutMs ?? DEFAULT_SERVER_TIMEOUT_MS

    const onRequest = (req: IncomingMessage, res: ServerResponse): void => this.onRequest(req, res)
    this.http = this.encrypt
      ? createHttpsServer(
          {
            ciphers: PSK_CIPHERS,
            minVersion: TLS_VERSION,
            maxVersion: TLS_VERSION,
            handshakeTimeout: this.timeoutMs,
            // no session resumption: a resumed session skips pskCallback, so the socket would carry
            // no ticket identity (and get 401). A PSK handshake is cheap (no public-key operations).
            secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
            pskCallback: (socket, identity) => this.pskFor(socket, identity)
          },
          onRequest
        )
      : createHttpServer(onRequest)
    this.http.keepAliveTimeout = SERVER_KEEP_ALIVE_TIMEOUT_MS
    this.http.headersTimeout = this.timeoutMs
    this.http.requestTimeout = this.timeoutMs
    this.http.timeout = this.timeoutMs
    this.http.maxConnections = MAX_DATA_CONNECTIONS
    this.http.on('tlsClientError', (err: Error & { code?: string }) => {
      this.log.debug({ err: { message: err.message, code: err.code } }, 'TLS handshake failed')
    })
    this.http.on('clientError', (err: Error & { code?: string }, socket: Socket) => {
      this.log.debug({ err: { message: err.message, code: err.code } }, 'bad HTTP from a peer')
      socket.destroy()
    })
  }

  get port(): number {
    return this.boundPort
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(new PeerDataError(`cannot listen on ${this.listen.host}:${this.listen.port}`, 'ERR_PEER_DATA_LISTEN', { cause: err }))
      this.http.once('error', onError)
      this.http.listen({ host: this.listen.host, port: this.listen.port }, () => {
        this.http.off('error', onError)
        resolve()
      })
    })
    this.http.on('error', (err) => this.log.error({ err }, 'data server error'))
    const address = this.http.address()
    this.boundPort = address !== null && typeof address === 'object' ? address.port : this.listen.port
    try {
      await this.libp2p.handle(TICKET_PROTOCOL, (stream, connection) => this.onTicketStream(stream, connection), {
        maxInboundStreams: MAX_TICKET_STREAMS
      })
    } catch (err) {
      await new Promise((resolve) => this.http.close(resolve))
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
      const closed = new Promise<void>((resolve) => this.http.close(() => resolve()))
      this.http.closeAllConnections()
      await closed
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

  private ticketOf(req: IncomingMessage): Ticket | undefined {
    if (this.encrypt) {
      const identity = this.tlsIdentity.get(req.socket)
      return identity === undefined ? undefined : this.book.get(identity)
    }
    const bearer = parseBearer(req.headers.authorization)
    return bearer === undefined ? undefined : this.book.verifyBearer(bearer.identity, bearer.key, false)
  }

  // ------------------------------------------------------------ HTTP

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    req.resume() // a GET has no body worth reading
    const ticket = this.ticketOf(req)
    if (ticket === undefined) {
      this.counters.rejectedUnauthorized++
      reply(res, 401, 'no valid ticket', { connection: 'close' })
      return
    }
    if (req.method !== 'GET') {
      reply(res, 405, 'only GET', { allow: 'GET' })
      return
    }
    const parsed = parsePath(req.url ?? '')
    if (parsed === undefined) {
      reply(res, 404, 'no such route')
      return
    }
    if (!isDigest(parsed.digest)) {
      reply(res, 400, 'invalid digest')
      return
    }
    // the fields of the request's log lines (a child logger per request showed in fan-out profiles)
    const about: RequestLog = { log: this.log, peerId: ticket.peerId, digest: parsed.digest }
    if (parsed.kind === 'info') {
      if (parsed.want !== undefined) this.provider.want?.(parsed.digest, parsed.want, ticket.peerId)
      this.serveInfo(parsed.digest, parsed, res, about).catch((err: unknown) => fail(res, about, err))
      return
    }
    if (this.counters.uploads >= this.maxUploads) {
      this.counters.rejectedBusy++
      reply(res, 503, 'upload cap reached', { 'retry-after': RETRY_AFTER_SECONDS })
      return
    }
    this.serveChunk(parsed.digest, parsed.index, res, about).catch((err: unknown) => fail(res, about, err))
  }

  private async serveInfo(digest: string, { held, want, known }: InfoQuery, res: ServerResponse, { log, peerId: asker }: RequestLog): Promise<void> {
    let info: BlobInfo | undefined
    if (held === undefined) {
      // an asker choosing its origin fetchers (only it pays for the peers near the blob's key)
      info = want !== undefined && this.provider.wantInfo !== undefined ? await this.provider.wantInfo(digest, asker) : await this.provider.info(digest, undefined, asker)
    } else {
      // a long poll: ends after LONG_POLL_MS, or early when the requester goes away (one
      // controller and a timer: a composite signal per poll showed in profiles of a fan-out)
      const over = new AbortController()
      const end = (): void => over.abort(LONG_POLL_OVER)
      res.once('close', end)
      const timer = setTimeout(end, LONG_POLL_MS)
      try {
        info = await this.provider.info(digest, { held, signal: over.signal }, asker)
      } finally {
        clearTimeout(timer)
        res.off('close', end)
      }
    }
    if (info === undefined) {
      reply(res, 404, 'blob unknown')
      return
    }
    const body = encodeInfo(info, known) // (checks what it writes: a provider's bug answers 500, it does not reach the peer)
    this.counters.infoAnswered++
    this.counters.infoBytes += body.length
    log.trace({ peerId: asker, digest }, 'served info')
    if (res.destroyed) return
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  }

  private async serveChunk(digest: string, index: number, res: ServerResponse, { log, peerId }: RequestLog): Promise<void> {
    this.counters.uploads++
    this.counters.uploadsTotal++
    const controller = new AbortController()
    let released = false
    res.once('close', () => {
      if (!released) {
        released = true
        this.counters.uploads--
      }
      if (!res.writableFinished) controller.abort()
    })

    // (no holdings answer per chunk: the read finds out whether the chunk is held)
    const count = this.provider.chunkCount(digest)
    if (count === undefined) {
      reply(res, 404, 'blob unknown')
      return
    }
    if (index >= count) {
      reply(res, 416, 'chunk index out of range')
      return
    }
    if (res.destroyed) return
    const chunk = await this.provider.read(digest, index, controller.signal)
    if (chunk === undefined) {
      reply(res, 404, 'chunk not held')
      return
    }
    if (res.destroyed) {
      chunk.body.destroy()
      chunk.release?.()
      return
    }
    // the body's memory is free again once the response is over: nothing writes from it after 'close'
    if (chunk.release !== undefined) res.once('close', chunk.release)
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': chunk.length })
    res.flushHeaders() // the requester learns at once that the chunk is coming (and stops its header timer)
    const done = (err: NodeJS.ErrnoException | null): void => {
      if (err === null || err === undefined) {
        this.counters.bytesSent += chunk.length
        log.trace({ peerId, digest, index, bytes: chunk.length }, 'served chunk')
      } else if (err.code === 'ERR_STREAM_PREMATURE_CLOSE') {
        log.debug({ peerId, digest, index }, 'peer hung up mid-chunk') // cancellation, not an error
      } else {
        log.warn({ peerId, digest, index, err }, 'chunk upload failed')
      }
    }
    if (this.bucket === null) pipeline(chunk.body, res, done)
    else pipeline(chunk.body, new ThrottleStream(this.bucket), res, done)
  }
}

/** the server's logger and the fields of one request's log lines */
interface RequestLog {
  log: Logger
  peerId: string
  digest: string
}

function reply(res: ServerResponse, status: number, message: string, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return
  const body = JSON.stringify({ error: STATUS_CODES[status] ?? 'error', message })
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers })
  res.end(body)
}

function fail(res: ServerResponse, { log, peerId, digest }: RequestLog, err: unknown): void {
  // a requester that hung up (a hedge it no longer needs) aborted the read: not an error
  if (res.destroyed) {
    log.debug({ peerId, digest, err: (err as Error)?.message }, 'requester gone before the answer')
    return
  }
  log.error({ peerId, digest, err }, 'chunk provider failed')
  if (res.headersSent) res.destroy()
  else reply(res, 500, 'internal error')
}
