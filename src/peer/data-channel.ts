/**
 * Requests to one peer's data port (chunks, and infos on a channel of their own), on kept-alive
 * sockets, without node:http's client: each socket reads into one reused buffer (`onread`), and
 * a chunk's body is copied once, straight into the buffer the caller receives the chunk into.
 *
 * Why not node:http: its parser hands every body piece over as a fresh Buffer (a copy of the
 * socket's read, allocated per read), which then had to be copied into the chunk buffer; the
 * 'data' events, the IncomingMessage stream and those short-lived buffers cost more CPU than the
 * bytes themselves: `scripts/bench/peer-transfer --daemon-only` put the pulling daemon at 8.2–9.3
 * CPU-s per GB before this and 6.3–6.9 after (see the README).
 *
 * The server (data-port.ts) always answers with a content-length, so the client
 * side of HTTP/1.1 needed here is small: one request at a time per socket, a status line and
 * headers, a body of content-length bytes. Anything else (chunked encoding, a body longer or
 * shorter than announced, a header block past MAX_HEAD_BYTES) is a protocol error and the socket
 * is dropped.
 */
import { type Socket, connect as netConnect } from 'node:net'
import { type SecureContext, connect as tlsConnect, createSecureContext } from 'node:tls'
import { PeerDataError, PeerProtocolError, PeerTimeoutError, PeerUnreachableError } from './errors.js'
import { PSK_CIPHERS, TLS_VERSION } from './protocol.js'

/** each socket's read buffer: what one read may return at most */
const READ_BUFFER_BYTES = 64 * 1024
/** a status line and headers longer than this are not from a Shoal peer */
const MAX_HEAD_BYTES = 16 * 1024
/** an error answer's body kept for its message (longer ones drop the socket) */
const MAX_ERROR_BODY_BYTES = 1024
const EMPTY = Buffer.alloc(0)

/**
 * The client side's TLS settings (PSK cipher, version), made once: tls.connect otherwise builds
 * a new OpenSSL context for every socket (0.7% of a 16-node fan-out's CPU, profiled). The key
 * and identity are per socket (`pskCallback`).
 */
let sharedPskContext: SecureContext | undefined
function pskContext(): SecureContext {
  sharedPskContext ??= createSecureContext({ ciphers: PSK_CIPHERS, minVersion: TLS_VERSION, maxVersion: TLS_VERSION })
  return sharedPskContext
}

export interface DataChannelOptions {
  peerId: string
  host: string
  port: number
  /** TLS 1.2 PSK with this key and identity; undefined: plaintext */
  psk: { key: Buffer; identity: string } | undefined
  /** extra request headers (the bearer ticket in plaintext) */
  headers: Record<string, string>
  maxSockets: number
  /** an idle kept-alive socket closes after this */
  idleMs: number
}

export interface DataRequest {
  path: string
  /** a 200's body goes here and must fill it exactly (a chunk); without it, see `maxBody` */
  into?: Buffer
  /** without `into`: a 200's body of at most this many bytes, returned in the response's `body` */
  maxBody?: number
  signal: AbortSignal
  /** the most a free socket (at maxSockets) and then the response headers may each take, and the longest the socket may idle mid-response */
  waitMs: number
}

/** A response: a 200's body is in the request's `into` if it had one, else in `body`, as is an error answer's (its first MAX_ERROR_BODY_BYTES). */
export interface DataResponse {
  status: number
  headers: Map<string, string>
  body: Buffer | undefined
}

/** One request in progress on a socket. */
interface Exchange {
  readonly request: DataRequest
  resolve(res: DataResponse): void
  reject(err: Error): void
  /** header bytes so far, until the blank line */
  head: Buffer
  response: DataResponse | undefined
  /** body bytes expected and received */
  length: number
  filled: number
  /** where the body goes: the request's `into` (a chunk) or a buffer of its own */
  target: Buffer | undefined
  timer: NodeJS.Timeout | undefined
}

class Conn {
  readonly socket: Socket
  exchange: Exchange | undefined
  idleTimer: NodeJS.Timeout | undefined
  /** false once the server said `connection: close`, a request on it failed, or an error body was cut short: closed after its request */
  reusable = true

  constructor(socket: Socket) {
    this.socket = socket
  }
}

export class DataChannel {
  private readonly options: DataChannelOptions
  private readonly head: (path: string) => string
  private readonly idle: Conn[] = []
  /** sockets with a request on them (or being handed to one) */
  private readonly busy = new Set<Conn>()
  private readonly waiting: { resolve(conn: Conn): void; reject(err: Error): void }[] = []
  private open = 0
  private retired = false

  constructor(options: DataChannelOptions) {
    this.options = options
    const extra = Object.entries(options.headers)
      .map(([name, value]) => `${name}: ${value}\r\n`)
      .join('')
    this.head = (path) => `GET ${path} HTTP/1.1\r\nhost: ${options.host}:${options.port}\r\n${extra}\r\n`
  }

  /**
   * Sends the request and resolves once its response is complete. Rejects with
   * PeerUnreachableError (no connection, or the connection failed before a response began),
   * PeerTimeoutError, PeerProtocolError, a plain Error when the connection fails mid-body, or
   * the signal's reason.
   */
  async request(request: DataRequest): Promise<DataResponse> {
    request.signal.throwIfAborted()
    const conn = await this.acquire(request.signal, request.waitMs)
    return new Promise<DataResponse>((resolve, reject) => {
      if (request.signal.aborted) {
        this.release(conn)
        reject(request.signal.reason)
        return
      }
      if (conn.socket.destroyed) {
        // closed (the channel destroyed, the peer hung up) between its handing over and now
        reject(new PeerUnreachableError(`data connection to ${this.options.peerId} closed before the request`))
        return
      }
      const onAbort = (): void => this.fail(conn, request.signal.reason instanceof Error ? request.signal.reason : new Error(String(request.signal.reason)))
      request.signal.addEventListener('abort', onAbort, { once: true })
      const settled = (): void => request.signal.removeEventListener('abort', onAbort)
      conn.exchange = {
        request,
        resolve: (res) => {
          settled()
          resolve(res)
        },
        reject: (err) => {
          settled()
          reject(err)
        },
        head: EMPTY,
        response: undefined,
        length: 0,
        filled: 0,
        target: undefined,
        timer: setTimeout(
          () => this.fail(conn, new PeerTimeoutError(`no response from ${this.options.peerId}'s data port within ${request.waitMs} ms`)),
          request.waitMs,
        ),
      }
      conn.socket.setTimeout(request.waitMs)
      conn.socket.write(this.head(request.path))
    })
  }

  /** No more reuse: idle sockets close now, busy ones once their response is complete. */
  retire(reason: Error = new PeerUnreachableError(`the session with ${this.options.peerId} was replaced`)): void {
    this.retired = true
    for (const conn of this.idle.splice(0)) conn.socket.destroy()
    for (const waiter of this.waiting.splice(0)) waiter.reject(reason)
  }

  /** Closes every socket; requests in flight fail with `reason`. */
  destroy(reason: Error): void {
    this.retire(reason)
    for (const conn of [...this.busy]) this.fail(conn, reason)
  }

  // ------------------------------------------------------------ sockets

  /** a socket for a request: an idle one, a new one, or (at maxSockets) the next one freed, within `waitMs` */
  private acquire(signal: AbortSignal, waitMs: number): Promise<Conn> {
    if (this.retired) return Promise.reject(new PeerUnreachableError(`the session with ${this.options.peerId} was replaced`))
    const conn = this.idle.pop()
    if (conn !== undefined) {
      clearTimeout(conn.idleTimer)
      conn.socket.ref()
      this.busy.add(conn)
      return Promise.resolve(conn)
    }
    if (this.open < this.options.maxSockets) return Promise.resolve(this.connect())
    return new Promise<Conn>((resolve, reject) => {
      const settle = (): void => {
        clearTimeout(timer)
        signal.removeEventListener('abort', onAbort)
      }
      const waiter = {
        resolve: (c: Conn) => {
          settle()
          resolve(c)
        },
        reject: (err: Error) => {
          settle()
          reject(err)
        },
      }
      const giveUp = (err: Error): void => {
        const at = this.waiting.indexOf(waiter)
        if (at >= 0) this.waiting.splice(at, 1)
        waiter.reject(err)
      }
      const onAbort = (): void => giveUp(signal.reason)
      const timer = setTimeout(() => giveUp(new PeerTimeoutError(`no socket to ${this.options.peerId}'s data port free within ${waitMs} ms`)), waitMs)
      signal.addEventListener('abort', onAbort, { once: true })
      this.waiting.push(waiter)
    })
  }

  private connect(): Conn {
    const { host, port, psk } = this.options
    const buffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES)
    let conn: Conn | undefined
    const onread = { buffer, callback: (n: number, buf: Uint8Array): boolean => this.onRead(conn as Conn, buf, n) }
    const socket =
      psk === undefined
        ? netConnect({ host, port, onread })
        : tlsConnect({
            // (tls.connect hands `onread` to the socket it makes; @types/node leaves it out of ConnectionOptions)
            ...({ onread } as object),
            host,
            port,
            secureContext: pskContext(),
            servername: '', // no SNI: the peer is reached by IP and authenticated by the PSK
            pskCallback: () => ({ psk: psk.key, identity: psk.identity }),
            checkServerIdentity: () => undefined, // no certificate: the PSK handshake is the authentication
          })
    socket.setNoDelay(true)
    conn = new Conn(socket)
    this.open++
    this.busy.add(conn)
    const c = conn
    socket.on('timeout', () => this.fail(c, new PeerTimeoutError(`${this.options.peerId}'s data connection idle`)))
    socket.on('error', (err: NodeJS.ErrnoException) => this.fail(c, this.connectionError(c, err)))
    socket.on('close', () => this.closed(c))
    // (with `onread` no bytes go through the stream; flowing mode lets 'end' and 'close' come)
    socket.resume()
    return conn
  }

  private connectionError(conn: Conn, err: NodeJS.ErrnoException): Error {
    if (err instanceof PeerDataError) return err
    const message = `data request to ${this.options.peerId} at ${this.options.host}:${this.options.port} failed: ${err.code ?? err.message}`
    // a failure before the response began: the request never reached the peer (retried on a new connection)
    if (conn.exchange?.response === undefined) return new PeerUnreachableError(message, { cause: err, refused: err.code === 'ECONNREFUSED' })
    return new Error(message, { cause: err })
  }

  /** the socket's request is over: the socket serves the next one, or closes */
  private release(conn: Conn): void {
    conn.exchange = undefined
    if (conn.socket.destroyed) return
    if (!conn.reusable || this.retired) {
      conn.socket.destroy()
      return
    }
    conn.socket.setTimeout(0)
    const waiter = this.waiting.shift()
    if (waiter !== undefined) {
      waiter.resolve(conn)
      return
    }
    this.busy.delete(conn)
    conn.idleTimer = setTimeout(() => conn.socket.destroy(), this.options.idleMs)
    conn.idleTimer.unref()
    conn.socket.unref() // an idle socket does not keep the process alive (as node:http's agent does with its free sockets)
    this.idle.push(conn)
  }

  private closed(conn: Conn): void {
    this.open--
    clearTimeout(conn.idleTimer)
    this.busy.delete(conn)
    const at = this.idle.indexOf(conn)
    if (at >= 0) this.idle.splice(at, 1)
    if (conn.exchange !== undefined) this.fail(conn, this.connectionError(conn, Object.assign(new Error('connection closed'), { code: 'ECONNRESET' })))
    // a socket freed up: the next waiter gets a new one
    const waiter = this.waiting.shift()
    if (waiter !== undefined) waiter.resolve(this.connect())
  }

  /** ends the socket's request with `err` (if it has one) and drops the socket */
  private fail(conn: Conn, err: Error): void {
    const exchange = conn.exchange
    conn.exchange = undefined
    conn.reusable = false
    if (exchange !== undefined) {
      clearTimeout(exchange.timer)
      exchange.reject(err)
    }
    conn.socket.destroy()
  }

  // ------------------------------------------------------------ HTTP/1.1, the response side

  /** bytes read on the socket: `buf` is the socket's own buffer, valid until this returns */
  private onRead(conn: Conn, buf: Uint8Array, n: number): boolean {
    const exchange = conn.exchange
    if (exchange === undefined) {
      // nothing was asked: a server never speaks first
      this.fail(conn, new PeerProtocolError(`${this.options.peerId} sent bytes nobody asked for`))
      return false
    }
    let offset = 0
    if (exchange.response === undefined) {
      offset = this.readHead(conn, exchange, buf, n)
      if (offset < 0) return false
      if (exchange.response === undefined) return true // the head goes on in the next read
    }
    let take = n - offset
    if (take > 0) {
      if (exchange.filled + take > exchange.length) {
        // past the part of an error answer's body that is kept (the socket is dropped after it)
        if (conn.reusable) {
          this.fail(conn, new PeerProtocolError(`${this.options.peerId} sent more than the ${exchange.length} bytes it announced`))
          return false
        }
        take = exchange.length - exchange.filled
      }
      // (buf is the Buffer given to `onread`: copied from without a view of it per read)
      ;(buf as Buffer).copy(exchange.target as Buffer, exchange.filled, offset, offset + take)
      exchange.filled += take
    }
    if (exchange.filled === exchange.length) this.complete(conn, exchange)
    return true
  }

  /** takes header bytes from `buf`; returns where the body begins in it (the head is over once `exchange.response` is set), or -1 when the socket was failed */
  private readHead(conn: Conn, exchange: Exchange, buf: Uint8Array, n: number): number {
    const before = exchange.head.length
    // A head mostly comes whole in one read, with the body's first bytes after it: searched in
    // the socket's own buffer then, without copying the read. Only a head split over reads is
    // kept (a copy: the socket's buffer is reused), and the blank line may straddle two reads:
    // searched from a little before this one.
    const head = before === 0 ? (buf as Buffer).subarray(0, n) : Buffer.concat([exchange.head, buf.subarray(0, n)])
    const blank = head.indexOf('\r\n\r\n', Math.max(0, before - 3))
    if (blank < 0) {
      exchange.head = before === 0 ? Buffer.from(head) : head
      if (head.length > MAX_HEAD_BYTES) {
        this.fail(conn, new PeerProtocolError(`${this.options.peerId} sent a response head over ${MAX_HEAD_BYTES} bytes`))
        return -1
      }
      return n
    }
    const text = head.toString('latin1', 0, blank + 4)
    exchange.head = EMPTY
    const response = parseHead(text)
    if (response === undefined) {
      this.fail(conn, new PeerProtocolError(`${this.options.peerId} sent a malformed response head`))
      return -1
    }
    const length = Number(response.headers.get('content-length'))
    if (response.headers.has('transfer-encoding') || !/^\d+$/.test(response.headers.get('content-length') ?? '')) {
      this.fail(conn, new PeerProtocolError(`${this.options.peerId} answered ${response.status} without a content-length`))
      return -1
    }
    if (response.headers.get('connection')?.toLowerCase() === 'close') conn.reusable = false
    const { into, maxBody = 0 } = exchange.request
    if (response.status === 200 && into !== undefined) {
      if (length !== into.length) {
        this.fail(conn, new PeerProtocolError(`${this.options.peerId} announced ${length} bytes for a chunk of ${into.length}`))
        return -1
      }
      exchange.target = into
    } else if (response.status === 200) {
      if (length > maxBody) {
        this.fail(conn, new PeerProtocolError(`${this.options.peerId} announced a body of ${length} bytes (at most ${maxBody} expected)`))
        return -1
      }
      exchange.target = Buffer.allocUnsafe(length)
      response.body = exchange.target
    } else {
      if (length > MAX_ERROR_BODY_BYTES) conn.reusable = false
      exchange.target = Buffer.allocUnsafe(Math.min(length, MAX_ERROR_BODY_BYTES))
      response.body = exchange.target
    }
    // an error body longer than kept: answered without it, and the socket is dropped
    exchange.length = Math.min(length, exchange.target.length)
    exchange.response = response
    clearTimeout(exchange.timer)
    return blank + 4 - before
  }

  private complete(conn: Conn, exchange: Exchange): void {
    const response = exchange.response as DataResponse
    clearTimeout(exchange.timer)
    this.release(conn)
    exchange.resolve(response)
  }
}

/** `HTTP/1.1 200 OK\r\nname: value\r\n…\r\n\r\n` → status and headers (names lower-cased); undefined if malformed */
export function parseHead(text: string): DataResponse | undefined {
  const lines = text.split('\r\n')
  const status = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(lines[0] ?? '')
  if (status === null) return undefined
  const headers = new Map<string, string>()
  for (const line of lines.slice(1)) {
    if (line === '') continue
    const colon = line.indexOf(':')
    if (colon <= 0) return undefined
    headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim())
  }
  return { status: Number(status[1]), headers, body: undefined }
}
