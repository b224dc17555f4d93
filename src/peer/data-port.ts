/**
 * The data port's side of HTTP/1.1: accepts TCP or TLS-PSK connections, reads one request head
 * at a time, and writes answers that always carry a content-length. server.ts decides what to
 * answer; this module only frames it. The requesting side has a client of its own
 * (data-channel.ts) for the same reason this exists: node:http's server (an IncomingMessage and
 * a ServerResponse stream per request, its parser's callbacks, a stream pipeline per chunk
 * body) was the largest piece of JavaScript in a 16-node fan-out's profile that was not ours.
 *
 * Everything here faces peers that may be hostile (a plaintext port takes any connection; a TLS
 * port anyone who completed a PSK handshake):
 * - a request head is at most MAX_REQUEST_HEAD_BYTES and must be complete within `timeoutMs` of
 *   the connection becoming idle; a socket silent for `timeoutMs` (idle, or not reading what is
 *   written to it) is dropped; at most `maxConnections` connections;
 * - a request line or header that is not HTTP/1.x answers 400 and the connection closes;
 * - a request with a body (content-length above 0, or transfer-encoding) answers 400 and the
 *   connection closes: no route takes a body;
 * - requests are answered in order, one at a time; bytes of a next request (pipelined) wait,
 *   within the head limit.
 */
import { STATUS_CODES } from 'node:http'
import { type Server, type Socket, createServer as createNetServer } from 'node:net'
import { type TLSSocket, type TlsOptions, createServer as createTlsServer } from 'node:tls'
import type { TokenBucket } from './rate-limit.js'

/** a request line and headers longer than this are not from a Shoal peer */
export const MAX_REQUEST_HEAD_BYTES = 8 * 1024
/**
 * A chunk body goes out in pieces of this size. A TLS socket encrypts each write whole into
 * buffers it allocates (OpenSSL's output BIO): one 4 MiB write per chunk made every chunk served
 * fault in and zero 4 MiB of fresh pages, the largest source of page faults in a 16-node fan-out
 * (profiled with perf). Written piece by piece, with backpressure, the buffers stay few and
 * reused. An upload rate limit takes its tokens per piece.
 */
const PIECE_BYTES = 256 * 1024
const REQUEST_LINE_RE = /^([A-Z]+) (\S+) HTTP\/1\.([01])$/
const TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const EMPTY = Buffer.alloc(0)

export interface DataPortOptions {
  /** TLS options (a PSK server); undefined: plaintext TCP */
  tls: TlsOptions | undefined
  /** request head, idle connection, stalled writes */
  timeoutMs: number
  maxConnections: number
  onRequest(exchange: Exchange): void
  /** a connection dropped for what the peer sent or did not send (for the log) */
  onBadPeer(reason: string, code?: string): void
  /** the listener failed after it began (accepting, say) */
  onError(err: Error): void
}

/** One request and its answer, given with `reply` or `send`: only the first answer counts, and nothing is written once the connection closed. */
export class Exchange {
  readonly method: string
  /** the request target as sent */
  readonly target: string
  readonly authorization: string | undefined
  private readonly conn: Conn
  private readonly keepAlive: boolean
  private controller: AbortController | undefined
  private answered = false

  constructor(conn: Conn, method: string, target: string, authorization: string | undefined, keepAlive: boolean) {
    this.conn = conn
    this.method = method
    this.target = target
    this.authorization = authorization
    this.keepAlive = keepAlive
  }

  get socket(): Socket {
    return this.conn.socket
  }

  /** true once the connection closed: an answer would go nowhere */
  get gone(): boolean {
    return this.conn.closed
  }

  /** aborts when the connection closes before the answer is complete, or on `abort` */
  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController()
      if (this.conn.closed) this.controller.abort()
    }
    return this.controller.signal
  }

  /** ends what waits on `signal` (a long poll that is over) */
  abort(reason: unknown): void {
    this.controller?.abort(reason)
  }

  /** a whole answer in one write; `close`: the connection closes after it */
  reply(status: number, contentType: string, body: string, extra = '', close = false): void {
    if (!this.begin()) return
    const keep = this.keepAlive && !close
    this.conn.socket.write(`${head(status, contentType, Buffer.byteLength(body), extra, keep)}${body}`)
    this.conn.finished(this, keep)
  }

  /** an error answer, `{"error": <the status's reason>, "message": …}` in JSON; `close`: the connection closes after it */
  fail(status: number, message: string, extra = '', close = false): void {
    this.reply(status, 'application/json', JSON.stringify({ error: STATUS_CODES[status] ?? 'error', message }), extra, close)
  }

  /**
   * A 200 with `bytes` as its body, written in pieces with backpressure and taken from
   * `bucket` as they go out if there is one. `done` runs once, when nothing reads `bytes` any
   * more: with null once all of it was written, or with the error that ended it (the connection
   * closed first).
   */
  send(contentType: string, bytes: Buffer, bucket: TokenBucket | null, done: (err: Error | null) => void): void {
    if (!this.begin()) {
      done(new Error('connection closed'))
      return
    }
    const socket = this.conn.socket
    let over = false
    const end = (err: Error | null | undefined): void => {
      if (over) return
      over = true
      socket.off('close', onClose)
      done(err ?? null)
    }
    const onClose = (): void => end(new Error('connection closed mid-body'))
    socket.once('close', onClose)
    let at = 0
    /** writes the next piece; false when the rest waits (for the bucket or for 'drain') */
    const write = (piece: Buffer): boolean => {
      const last = at >= bytes.length
      const flowing = socket.write(piece, last ? end : undefined)
      if (last) this.conn.finished(this, this.keepAlive)
      else if (!flowing) socket.once('drain', next)
      return flowing
    }
    const next = (): void => {
      while (!over && at < bytes.length) {
        const piece = bytes.subarray(at, at + PIECE_BYTES)
        at += piece.length
        const waitMs = bucket === null ? 0 : bucket.reserve(piece.length)
        if (waitMs >= 1) {
          setTimeout(() => {
            if (!over && write(piece)) next()
          }, waitMs)
          return
        }
        if (!write(piece)) return
      }
    }
    // the head goes out with the first piece (one TLS record run, one syscall)
    socket.cork()
    socket.write(head(200, contentType, bytes.length, '', this.keepAlive))
    if (bytes.length === 0) {
      socket.write(EMPTY, end)
      this.conn.finished(this, this.keepAlive)
    } else next()
    socket.uncork()
  }

  private begin(): boolean {
    if (this.answered) return false
    this.answered = true
    return !this.conn.closed
  }

  /** (called by the connection when it closed) */
  connectionClosed(): void {
    this.controller?.abort()
  }
}

function head(status: number, contentType: string, length: number, extra: string, keepAlive: boolean): string {
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\ncontent-type: ${contentType}\r\ncontent-length: ${length}\r\n${extra}${keepAlive ? '' : 'connection: close\r\n'}\r\n`
}

class Conn {
  readonly socket: Socket
  private readonly port: DataPort
  /** input not yet taken: a request head in progress, or a pipelined one waiting its turn */
  private input: Buffer = EMPTY
  private exchange: Exchange | undefined
  /** when the connection last began to wait for a request head */
  private waitingSince = performance.now()
  /** in `take`'s loop */
  private taking = false
  closed = false

  constructor(port: DataPort, socket: Socket) {
    this.port = port
    this.socket = socket
    socket.setNoDelay(true)
    socket.setTimeout(port.options.timeoutMs, () => socket.destroy())
    socket.on('data', (data: Buffer) => this.onData(data))
    socket.on('error', (err: NodeJS.ErrnoException) => port.options.onBadPeer(err.message, err.code))
    socket.once('close', () => {
      this.closed = true
      this.input = EMPTY
      this.exchange?.connectionClosed()
      this.exchange = undefined
    })
  }

  private onData(data: Buffer): void {
    this.input = this.input.length === 0 ? data : Buffer.concat([this.input, data])
    if (this.exchange === undefined) this.take()
    else if (this.input.length > MAX_REQUEST_HEAD_BYTES) this.drop('pipelined bytes over the head limit')
  }

  /** the answer to `exchange` is written (or queued, in order); the next request may begin */
  finished(exchange: Exchange, keepAlive: boolean): void {
    if (this.exchange !== exchange) return
    this.exchange = undefined
    if (!keepAlive) {
      this.input = EMPTY
      this.socket.end()
      return
    }
    this.waitingSince = performance.now()
    if (this.input.length > 0) this.take()
  }

  /**
   * Begins the requests whose heads are complete in `input`, one after another as each is
   * answered (in a loop: pipelined requests answered at once do not nest calls)
   */
  private take(): void {
    if (this.taking) return // (an answer given inside the loop below: the loop goes on)
    this.taking = true
    try {
      while (this.exchange === undefined && !this.closed && this.input.length > 0 && this.takeOne());
    } finally {
      this.taking = false
    }
  }

  /** begins the request whose head is complete in `input`; false when there is none (yet) */
  private takeOne(): boolean {
    const input = this.input
    const blank = input.indexOf('\r\n\r\n')
    if (blank < 0) {
      if (input.length > MAX_REQUEST_HEAD_BYTES) this.drop('a request head over the limit')
      else if (performance.now() - this.waitingSince > this.port.options.timeoutMs) this.drop('a request head too slow')
      return false
    }
    if (blank > MAX_REQUEST_HEAD_BYTES) {
      this.drop('a request head over the limit')
      return false
    }
    this.input = blank + 4 === input.length ? EMPTY : input.subarray(blank + 4)
    const exchange = this.parse(input.toString('latin1', 0, blank))
    if (exchange === undefined) return false
    this.exchange = exchange
    try {
      this.port.options.onRequest(exchange)
    } catch (err) {
      this.port.options.onBadPeer(`request handler failed: ${(err as Error).message}`)
      this.socket.destroy()
      return false
    }
    return true
  }

  /** the request in a head (without its blank line); undefined when it was answered 400 */
  private parse(text: string): Exchange | undefined {
    const lines = text.split('\r\n')
    const line = REQUEST_LINE_RE.exec(lines[0] ?? '')
    if (line === null) return this.refuse('a malformed request line')
    let authorization: string | undefined
    let connection: string | undefined
    for (let i = 1; i < lines.length; i++) {
      const header = lines[i]!
      const colon = header.indexOf(':')
      if (colon <= 0) return this.refuse('a malformed header')
      const name = header.slice(0, colon).toLowerCase()
      if (!TOKEN_RE.test(name)) return this.refuse('a malformed header name')
      const value = header.slice(colon + 1).trim()
      if (name === 'authorization') authorization ??= value
      else if (name === 'connection') connection = value.toLowerCase()
      else if (name === 'transfer-encoding' || (name === 'content-length' && value !== '0')) return this.refuse('a request with a body')
    }
    // HTTP/1.1 keeps the connection unless told not to; 1.0 closes it (no route needs more)
    const keepAlive = line[3] === '1' && connection !== 'close'
    return new Exchange(this, line[1]!, line[2]!, authorization, keepAlive)
  }

  private refuse(reason: string): undefined {
    this.port.options.onBadPeer(reason)
    const exchange = new Exchange(this, '', '', undefined, false)
    this.exchange = exchange
    exchange.fail(400, reason)
    return undefined
  }

  private drop(reason: string): void {
    this.port.options.onBadPeer(reason)
    this.socket.destroy()
  }
}

/** The listener: `listen`, then `close` (stops accepting and drops every connection). */
export class DataPort {
  readonly options: DataPortOptions
  private readonly server: Server
  private readonly conns = new Set<Socket>()

  constructor(options: DataPortOptions) {
    this.options = options
    const accept = (socket: Socket): void => {
      this.conns.add(socket)
      socket.once('close', () => this.conns.delete(socket))
      new Conn(this, socket)
    }
    if (options.tls === undefined) {
      this.server = createNetServer(accept)
    } else {
      const server = createTlsServer({ ...options.tls, handshakeTimeout: options.timeoutMs }, (socket: TLSSocket) => accept(socket))
      server.on('tlsClientError', (err: NodeJS.ErrnoException) => options.onBadPeer(`TLS handshake failed: ${err.message}`, err.code))
      this.server = server
    }
    this.server.maxConnections = options.maxConnections
  }

  /** resolves with the bound port */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen({ host, port }, () => {
        this.server.off('error', reject)
        this.server.on('error', this.options.onError)
        const address = this.server.address()
        resolve(address !== null && typeof address === 'object' ? address.port : port)
      })
    })
  }

  /** stops accepting and closes every connection (their requests' signals abort) */
  async close(): Promise<void> {
    const closed = [new Promise<void>((resolve) => this.server.close(() => resolve()))]
    for (const socket of this.conns) {
      closed.push(new Promise((resolve) => socket.once('close', resolve)))
      socket.destroy()
    }
    await Promise.all(closed)
  }
}
