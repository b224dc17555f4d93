/**
 * The data channel's HTTP/1.1 response side against raw servers on loopback: heads split
 * anywhere, kept-alive reuse, error answers, and peers that break the protocol (each a clear
 * error, never a crash, a hang or a short buffer taken as a chunk).
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { type AddressInfo, type Server, type Socket, createServer } from 'node:net'
import { afterEach, describe, it } from 'node:test'
import { DataChannel, parseHead } from '../../src/peer/data-channel.js'
import { PeerProtocolError, PeerTimeoutError, PeerUnreachableError } from '../../src/peer/errors.js'

const BODY = randomBytes(200_000)

/** a server that answers each request (a head ending in a blank line) with `answer(n)`, written in the pieces `split` makes */
async function rawServer(answer: (n: number) => Buffer, split: (bytes: Buffer) => Buffer[] = (bytes) => [bytes]): Promise<{ server: Server; port: number; connections: () => number; requests: string[] }> {
  const requests: string[] = []
  let connections = 0
  const server = createServer((socket: Socket) => {
    connections++
    let pending = ''
    socket.on('data', async (data) => {
      pending += data.toString('latin1')
      while (pending.includes('\r\n\r\n')) {
        const at = pending.indexOf('\r\n\r\n')
        requests.push(pending.slice(0, at))
        pending = pending.slice(at + 4)
        const pieces = split(answer(requests.length))
        for (const piece of pieces) {
          socket.write(piece)
          if (pieces.length > 1) await new Promise((resolve) => setTimeout(resolve, 1))
        }
      }
    })
    socket.on('error', () => {})
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  servers.push(server)
  return { server, port: (server.address() as AddressInfo).port, connections: () => connections, requests }
}

const servers: Server[] = []
const channels: DataChannel[] = []

function channel(port: number, maxSockets = 2): DataChannel {
  const c = new DataChannel({ peerId: 'peer', host: '127.0.0.1', port, psk: undefined, headers: { authorization: 'Bearer t' }, maxSockets, idleMs: 5_000 })
  channels.push(c)
  return c
}

/** the first `bytes` one by one (a head split everywhere), then the rest in `pieces` */
function dribble(bytes: number, pieces: number): (all: Buffer) => Buffer[] {
  return (all) => {
    const out = Array.from({ length: bytes }, (_, i) => all.subarray(i, i + 1))
    const step = Math.ceil((all.length - bytes) / pieces)
    for (let i = bytes; i < all.length; i += step) out.push(all.subarray(i, i + step))
    return out
  }
}

function ok(body: Buffer, extra = ''): Buffer {
  return Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: ${body.length}\r\n${extra}\r\n`), body])
}

function get(c: DataChannel, into: Buffer, waitMs = 2_000) {
  return c.request({ path: '/chunk', into, signal: AbortSignal.timeout(5_000), waitMs })
}

afterEach(() => {
  for (const c of channels.splice(0)) c.destroy(new Error('test over'))
  for (const s of servers.splice(0)) s.close()
})

describe('data channel', () => {
  it('parses status lines and headers', () => {
    const head = parseHead('HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\ncontent-length: 0\r\n\r\n')
    assert.equal(head?.status, 503)
    assert.equal(head?.headers.get('retry-after'), '1')
    assert.equal(parseHead('HTTP/1.1 200\r\n\r\n')?.status, 200)
    assert.equal(parseHead('SSH-2.0-OpenSSH\r\n\r\n'), undefined)
    assert.equal(parseHead('HTTP/1.1 200 OK\r\nno colon here\r\n\r\n'), undefined)
  })

  it('receives a body whose head and bytes arrive in many pieces, and reuses the socket', async () => {
    const { port, connections, requests } = await rawServer(() => ok(BODY), dribble(120, 97))
    const c = channel(port)
    for (let i = 0; i < 3; i++) {
      const into = Buffer.alloc(BODY.length)
      const res = await get(c, into)
      assert.equal(res.status, 200)
      assert.ok(into.equals(BODY), `request ${i}`)
    }
    assert.equal(connections(), 1, 'one kept-alive socket for requests one after the other')
    assert.match(requests[0] as string, /^GET \/chunk HTTP\/1\.1\r\nhost: 127\.0\.0\.1:\d+\r\nauthorization: Bearer t$/)
  })

  it('answers an error status with its body and keeps the socket', async () => {
    const message = Buffer.from('{"message":"chunk not held"}')
    const { port, connections } = await rawServer((n) => (n === 1 ? Buffer.concat([Buffer.from(`HTTP/1.1 404 Not Found\r\ncontent-length: ${message.length}\r\n\r\n`), message]) : ok(BODY)))
    const c = channel(port)
    const missing = await get(c, Buffer.alloc(BODY.length))
    assert.equal(missing.status, 404)
    assert.equal(missing.body?.toString(), message.toString())
    const into = Buffer.alloc(BODY.length)
    assert.equal((await get(c, into)).status, 200)
    assert.ok(into.equals(BODY))
    assert.equal(connections(), 1)
  })

  it('returns a body without a buffer given, up to maxBody', async () => {
    const info = Buffer.from('{"size":1}')
    const { port, connections } = await rawServer(() => ok(info))
    const c = channel(port)
    const res = await c.request({ path: '/info', maxBody: 100, signal: AbortSignal.timeout(5_000), waitMs: 2_000 })
    assert.equal(res.status, 200)
    assert.equal(res.body?.toString(), info.toString())
    await assert.rejects(c.request({ path: '/info', maxBody: 5, signal: AbortSignal.timeout(5_000), waitMs: 2_000 }), PeerProtocolError)
    assert.equal(connections(), 1, 'the socket was reused until the body too long dropped it')
  })

  it('takes a connection: close answer and then opens a new socket', async () => {
    const { port, connections } = await rawServer((n) => (n === 1 ? Buffer.from('HTTP/1.1 401 Unauthorized\r\nconnection: close\r\ncontent-length: 0\r\n\r\n') : ok(BODY)))
    const c = channel(port)
    assert.equal((await get(c, Buffer.alloc(BODY.length))).status, 401)
    const into = Buffer.alloc(BODY.length)
    assert.equal((await get(c, into)).status, 200)
    assert.ok(into.equals(BODY))
    assert.equal(connections(), 2)
  })

  it('refuses a chunk of another length, a chunked body, a body past its length and garbage', async () => {
    const cases: [string, Buffer][] = [
      ['shorter length', ok(BODY.subarray(1))],
      ['chunked', Buffer.from('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n')],
      ['longer body', Buffer.concat([ok(BODY), Buffer.from('trailing bytes')])],
      ['garbage', Buffer.from('this is not http\r\n\r\n')],
      ['huge head', Buffer.from(`HTTP/1.1 200 OK\r\nx: ${'a'.repeat(20_000)}\r\n\r\n`)],
    ]
    for (const [what, answer] of cases) {
      const { port } = await rawServer(() => answer)
      const into = Buffer.alloc(BODY.length)
      await assert.rejects(get(channel(port), into), PeerProtocolError, what)
    }
  })

  it('fails a body cut short, and a silent or absent server, within its wait', async () => {
    const cut = await rawServer(() => ok(BODY).subarray(0, 1000))
    const started = Date.now()
    await assert.rejects(get(channel(cut.port), Buffer.alloc(BODY.length), 300), PeerTimeoutError)
    assert.ok(Date.now() - started < 2_000)
    const silent = await rawServer(() => Buffer.alloc(0))
    await assert.rejects(get(channel(silent.port), Buffer.alloc(10), 300), PeerTimeoutError)
    const gone = await rawServer(() => ok(BODY))
    gone.server.close()
    await new Promise((resolve) => setTimeout(resolve, 50))
    await assert.rejects(get(channel(gone.port), Buffer.alloc(10)), (err: Error) => err instanceof PeerUnreachableError && err.refused)
  })

  it('queues requests beyond its sockets and aborts a waiting one', async () => {
    const { port, connections } = await rawServer(() => ok(BODY), dribble(0, 20))
    const c = channel(port, 2)
    const bodies = Array.from({ length: 5 }, () => Buffer.alloc(BODY.length))
    const all = bodies.map((into) => get(c, into))
    const controller = new AbortController()
    const waiting = c.request({ path: '/chunk', into: Buffer.alloc(BODY.length), signal: controller.signal, waitMs: 2_000 })
    controller.abort(new Error('not wanted'))
    await assert.rejects(waiting, /not wanted/)
    for (const res of await Promise.all(all)) assert.equal(res.status, 200)
    for (const into of bodies) assert.ok(into.equals(BODY))
    assert.equal(connections(), 2)
  })
})
