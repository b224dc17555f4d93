/**
 * The data port's HTTP/1.1 request side against raw sockets on loopback: what a well-behaved
 * peer gets (kept-alive answers in order, bodies whole, the answer's work stopped when the peer
 * hangs up) and what a hostile one gets (400 and a closed connection for what is not a
 * body-less HTTP/1.x request; a dropped connection for heads too long or too slow and for
 * silence).
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { type Socket, connect } from 'node:net'
import { afterEach, describe, it } from 'node:test'
import { DataPort, type Exchange, MAX_REQUEST_HEAD_BYTES } from '../../src/peer/data-port.js'
import { TokenBucket } from '../../src/peer/rate-limit.js'
import { waitFor } from '../helpers/proc.js'

const BODY = randomBytes(1024 * 1024 + 17)

const ports: DataPort[] = []
const sockets: Socket[] = []

interface Started {
  port: number
  /** what onBadPeer was told */
  drops: string[]
  /** the polls that are waiting, and those whose signal aborted */
  polls: { waiting: number; aborted: number }
  /** each body `send` finished: null or the error */
  sent: (Error | null)[]
}

async function start(timeoutMs = 5_000, bucket: TokenBucket | null = null): Promise<Started> {
  const started: Started = { port: 0, drops: [], polls: { waiting: 0, aborted: 0 }, sent: [] }
  const port = new DataPort({
    tls: undefined,
    timeoutMs,
    maxConnections: 16,
    onRequest: (exchange: Exchange) => {
      if (exchange.target === '/body') {
        exchange.send('application/octet-stream', BODY, bucket, (err) => started.sent.push(err))
      } else if (exchange.target === '/poll') {
        started.polls.waiting++
        exchange.signal.addEventListener('abort', () => started.polls.aborted++)
      } else {
        exchange.reply(200, 'text/plain', `${exchange.method} ${exchange.target} ${exchange.authorization ?? '-'}`)
      }
    },
    onBadPeer: (reason) => started.drops.push(reason),
    onError: (err) => assert.fail(err)
  })
  ports.push(port)
  started.port = await port.listen('127.0.0.1', 0)
  return started
}

/** connects and writes `request`; resolves with everything read until the server closes or `until` holds */
async function exchange(port: number, request: string | Buffer, until: (read: Buffer) => boolean = () => false): Promise<{ read: Buffer; closed: boolean }> {
  const socket = connect({ host: '127.0.0.1', port })
  sockets.push(socket)
  socket.on('error', () => {})
  await once(socket, 'connect')
  socket.write(request)
  let read = Buffer.alloc(0)
  return new Promise((resolve) => {
    socket.on('data', (data: Buffer) => {
      read = Buffer.concat([read, data])
      if (until(read)) resolve({ read, closed: false })
    })
    socket.once('close', () => resolve({ read, closed: true }))
  })
}

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy()
  await Promise.all(ports.splice(0).map((port) => port.close()))
})

describe('data port', { timeout: 20_000 }, () => {
  it('answers kept-alive requests in order, pipelined ones too, with a content-length', async () => {
    const { port } = await start()
    const two = 'GET /a HTTP/1.1\r\nauthorization: Bearer x\r\n\r\nGET /b HTTP/1.1\r\nhost: h\r\n\r\n'
    const { read, closed } = await exchange(port, two, (bytes) => bytes.toString().includes('GET /b -'))
    assert.equal(closed, false, 'kept alive')
    const text = read.toString()
    assert.match(text, /^HTTP\/1\.1 200 OK\r\ncontent-type: text\/plain\r\ncontent-length: 15\r\n\r\nGET \/a Bearer x/)
    assert.ok(text.indexOf('GET /a') < text.indexOf('GET /b'), 'in order')
    assert.doesNotMatch(text, /connection: close/)
  })

  it('answers as many pipelined requests as fit in a head, in order', async () => {
    const { port } = await start()
    const one = 'GET /x HTTP/1.1\r\n\r\n'
    const n = Math.floor(MAX_REQUEST_HEAD_BYTES / one.length)
    const { read, closed } = await exchange(port, one.repeat(n), (bytes) => bytes.toString().split('GET /x -').length - 1 === n)
    assert.equal(closed, false)
    assert.equal(read.toString().split('HTTP/1.1 200 OK').length - 1, n)
  })

  it('closes after the answer when the peer says so, or speaks HTTP/1.0', async () => {
    const { port } = await start()
    for (const request of ['GET /a HTTP/1.1\r\nConnection: close\r\n\r\n', 'GET /a HTTP/1.0\r\n\r\n']) {
      const { read, closed } = await exchange(port, request)
      assert.equal(closed, true, request)
      assert.match(read.toString(), /^HTTP\/1\.1 200 OK\r\n.*connection: close\r\n\r\nGET \/a -$/s)
    }
  })

  it('sends a body whole, in pieces, and says when it is done', async () => {
    const { port, sent } = await start()
    const { read } = await exchange(port, 'GET /body HTTP/1.1\r\n\r\n', (bytes) => bytes.length >= BODY.length + 80)
    const at = read.indexOf('\r\n\r\n') + 4
    assert.match(read.subarray(0, at).toString(), new RegExp(`content-length: ${BODY.length}\r\n`))
    assert.ok(read.subarray(at).equals(BODY))
    await waitFor('the send done', () => sent.length === 1, { timeoutMs: 2_000 })
    assert.equal(sent[0], null)
  })

  it('takes a throttled body from its bucket', async () => {
    const rate = 4 * 1024 * 1024
    const { port, sent } = await start(5_000, new TokenBucket({ rate }))
    const started = performance.now()
    const { read } = await exchange(port, 'GET /body HTTP/1.1\r\n\r\n', (bytes) => bytes.length >= BODY.length + 80)
    const seconds = (performance.now() - started) / 1000
    assert.ok(read.subarray(read.indexOf('\r\n\r\n') + 4).equals(BODY))
    // 1 MiB at 4 MiB/s after a burst of 409.6 KiB: at least ~0.15 s
    assert.ok(seconds >= (BODY.length - rate / 10) / rate - 0.05, `${seconds.toFixed(3)} s`)
    await waitFor('the send done', () => sent.length === 1, { timeoutMs: 2_000 })
  })

  it('tells a body cut short by the peer hanging up, and stops a waiting answer when the peer goes', async () => {
    const { port, sent, polls } = await start(5_000, new TokenBucket({ rate: 256 * 1024 }))
    await exchange(port, 'GET /body HTTP/1.1\r\n\r\n', (bytes) => bytes.length > 1000)
    for (const socket of sockets.splice(0)) socket.destroy()
    await waitFor('the send ended', () => sent.length === 1, { timeoutMs: 3_000 })
    assert.ok(sent[0] instanceof Error)

    const poll = exchange(port, 'GET /poll HTTP/1.1\r\n\r\n')
    await waitFor('the poll waiting', () => polls.waiting === 1, { timeoutMs: 2_000 })
    assert.equal(polls.aborted, 0)
    for (const socket of sockets.splice(0)) socket.end() // a half-close is a hang-up too
    await waitFor('the poll aborted', () => polls.aborted === 1, { timeoutMs: 3_000 })
    assert.equal((await poll).closed, true)
  })

  it('answers 400 and closes for what is not a body-less HTTP/1.x request', async () => {
    const { port, drops } = await start()
    const bad = [
      'HELLO\r\n\r\n',
      'GET /a HTTP/2.0\r\n\r\n',
      'GET  /a HTTP/1.1\r\n\r\n',
      'get /a HTTP/1.1\r\n\r\n',
      'GET /a HTTP/1.1\r\nno colon\r\n\r\n',
      'GET /a HTTP/1.1\r\n folded: value\r\n\r\n',
      'GET /a HTTP/1.1\r\nbad name: x\r\n\r\n',
      'GET /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello',
      'GET /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n'
    ]
    for (const request of bad) {
      const { read, closed } = await exchange(port, request)
      assert.equal(closed, true, JSON.stringify(request))
      assert.match(read.toString(), /^HTTP\/1\.1 400 Bad Request\r\ncontent-type: application\/json\r\n.*connection: close\r\n\r\n\{"error":"Bad Request"/s, JSON.stringify(request))
    }
    assert.equal(drops.length, bad.length)
    // and a request with an empty body is fine
    const { read } = await exchange(port, 'GET /a HTTP/1.1\r\ncontent-length: 0\r\n\r\n', (bytes) => bytes.includes('GET /a -'))
    assert.match(read.toString(), /^HTTP\/1\.1 200 OK/)
  })

  it('drops a head over the limit, a head too slow and a silent connection', async () => {
    const { port, drops } = await start(600)
    const long = await exchange(port, `GET /a HTTP/1.1\r\nx: ${'a'.repeat(MAX_REQUEST_HEAD_BYTES)}`)
    assert.deepEqual(long, { read: Buffer.alloc(0), closed: true })
    const pipelined = await exchange(port, `GET /poll HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\nx: ${'a'.repeat(MAX_REQUEST_HEAD_BYTES)}`)
    assert.equal(pipelined.closed, true, 'bytes waiting behind a request are bounded too')

    // a byte every 200 ms: each keeps the socket busy, the head is still too slow
    const socket = connect({ host: '127.0.0.1', port })
    sockets.push(socket)
    socket.on('error', () => {})
    await once(socket, 'connect')
    const closed = once(socket, 'close')
    const started = performance.now()
    const drip = setInterval(() => socket.write('G'), 200)
    await closed
    clearInterval(drip)
    assert.ok(performance.now() - started < 2_000)

    const silent = await exchange(port, '')
    assert.equal(silent.closed, true)
    assert.ok(drops.includes('a request head over the limit'))
    assert.ok(drops.includes('a request head too slow'))
  })

  it('stops accepting and drops its connections on close', async () => {
    const { port, polls } = await start()
    const waiting = exchange(port, 'GET /poll HTTP/1.1\r\n\r\n')
    await waitFor('the poll waiting', () => polls.waiting === 1, { timeoutMs: 2_000 })
    await ports.splice(0)[0]!.close()
    assert.equal((await waiting).closed, true)
    assert.equal(polls.aborted, 1)
    const refused = connect({ host: '127.0.0.1', port })
    const [err] = (await once(refused, 'error')) as [NodeJS.ErrnoException]
    assert.equal(err.code, 'ECONNREFUSED')
  })
})
