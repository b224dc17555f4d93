import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer as createHttpServer, request as httpRequest } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { Readable } from 'node:stream'
import { after, afterEach, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { connect as tlsConnect } from 'node:tls'
import { pino } from 'pino'
import { type PeerNode, createPeerNode, generateSwarmKey } from '../../src/p2p/node.js'
import {
  type BlobInfo,
  type ChunkProvider,
  type ChunkRead,
  ChunkUnavailableError,
  PeerBusyError,
  PeerDataArgumentError,
  type PeerDataClient,
  type PeerDataServer,
  type PeerDataServerOptions,
  PeerPolicyError,
  PeerTimeoutError,
  PeerUnreachableError,
  createPeerDataClient,
  createPeerDataServer
} from '../../src/peer/index.js'
import { TICKET_PROTOCOL, bitfield, decodeTicket, encodeInfo, encodeTicket, encodeTicketRequest } from '../../src/peer/protocol.js'
import { readMessage, writeMessage } from '../../src/peer/libp2p-io.js'
import type { PeerRef } from '../../src/routing/types.js'
import { waitFor } from '../helpers/proc.js'

const logger = pino({ level: process.env['SHOAL_TEST_LOG'] ?? 'silent' })
const CHUNK = 256 * 1024
const SIZE = 5 * CHUNK + 1234 // 6 chunks, the last short
const NOT_HELD = 3

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

const blob = randomBytes(SIZE)
const DIGEST = `sha256:${sha256(blob)}`
const CHUNKS = Array.from({ length: Math.ceil(SIZE / CHUNK) }, (_, i) => blob.subarray(i * CHUNK, Math.min(SIZE, (i + 1) * CHUNK)))
const TABLE = CHUNKS.map(sha256)

/** serves `blob` (all chunks but NOT_HELD); `gate` holds bodies back until released */
class FakeProvider implements ChunkProvider {
  gate: Promise<void> | undefined
  reads = 0
  aborted = 0

  /** long polls: the `held` each asked with; they wait for `progress` */
  waits: number[] = []
  progress: Promise<void> | undefined

  async info(digest: string, wait?: { held: number; signal: AbortSignal }): Promise<BlobInfo | undefined> {
    if (digest !== DIGEST) return undefined
    if (wait !== undefined) {
      this.waits.push(wait.held)
      await this.progress
    }
    return { size: SIZE, chunkSize: CHUNK, table: TABLE, have: CHUNKS.map((_, i) => i !== NOT_HELD) }
  }

  layout(digest: string): { size: number; chunkSize: number } | undefined {
    return digest === DIGEST ? { size: SIZE, chunkSize: CHUNK } : undefined
  }

  async read(digest: string, index: number, signal: AbortSignal): Promise<ChunkRead | undefined> {
    if (digest !== DIGEST || index === NOT_HELD || index >= CHUNKS.length) return undefined
    this.reads++
    signal.addEventListener('abort', () => this.aborted++, { once: true })
    if (this.gate !== undefined) {
      const aborted = new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
      await Promise.race([this.gate, aborted])
    }
    return { bytes: CHUNKS[index]! }
  }
}

/** chunk `index` of DIGEST from `peer`, received into a buffer of its length */
async function fetchChunk(c: PeerDataClient, peer: PeerRef, index: number, signal: AbortSignal, digest = DIGEST): Promise<Buffer> {
  const into = Buffer.alloc(CHUNKS[index]?.length ?? CHUNK)
  await c.fetchChunk(peer, digest, index, { signal, into })
  return into
}

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const part of stream) parts.push(part as Buffer)
  return Buffer.concat(parts)
}

function ref(node: PeerNode): PeerRef {
  return { id: node.peerId, addrs: node.status().listenAddrs.map((a) => a.replace(/\/p2p\/[^/]+$/, '')) }
}

/** plain HTTP GET, resolving to status and body, or rejecting on a transport error */
function rawGet(port: number, urlPath: string, headers: Record<string, string> = {}, method = 'GET'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: urlPath, method, headers, agent: false }, (res) => {
      collect(res).then((body) => resolve({ status: res.statusCode ?? 0, body: body.toString() }), reject)
    })
    req.setTimeout(3_000, () => req.destroy(new Error('timeout')))
    req.once('error', reject)
    req.end()
  })
}

describe('peer data plane: tickets over libp2p, chunks over HTTP(S) on a data port', { timeout: 20_000 }, () => {
  let root: string
  let a: PeerNode
  let b: PeerNode
  let outsider: PeerNode
  const provider = new FakeProvider()
  const servers: PeerDataServer[] = []
  const clients: PeerDataClient[] = []

  async function serve(options: Partial<PeerDataServerOptions> = {}): Promise<PeerDataServer> {
    const server = await createPeerDataServer({
      libp2p: a.libp2p,
      provider,
      encrypt: true,
      listen: { host: '127.0.0.1', port: 0 },
      maxUploads: 8,
      logger,
      ...options
    })
    servers.push(server)
    return server
  }

  function client(encrypt: boolean, extra: { node?: PeerNode; timeoutMs?: number; now?: () => number; warm?: boolean } = {}): PeerDataClient {
    const c = createPeerDataClient({
      libp2p: (extra.node ?? b).libp2p,
      encrypt,
      logger,
      timeoutMs: extra.timeoutMs ?? 5_000,
      ...(extra.now ? { now: extra.now } : {}),
      ...(extra.warm ? { warm: true } : {})
    })
    clients.push(c)
    return c
  }

  before(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'shoal-peer-data-'))
    const swarm = path.join(root, 'swarm.key')
    const otherSwarm = path.join(root, 'other.key')
    await writeFile(swarm, generateSwarmKey(), { mode: 0o600 })
    await writeFile(otherSwarm, generateSwarmKey(), { mode: 0o600 })
    const start = (name: string, swarmKeyFile: string): Promise<PeerNode> =>
      createPeerNode({ dataDir: path.join(root, name), listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], swarmKeyFile, logger: logger.child({ node: name }) })
    ;[a, b, outsider] = await Promise.all([start('a', swarm), start('b', swarm), start('outsider', otherSwarm)])
  })

  afterEach(async () => {
    provider.gate = undefined
    await Promise.all(clients.splice(0).map((c) => c.close()))
    await Promise.all(servers.splice(0).map((s) => s.close()))
  })

  after(async () => {
    await Promise.all([a, b, outsider].filter(Boolean).map((n) => n.stop()))
    await rm(root, { recursive: true, force: true })
  })

  for (const encrypt of [true, false]) {
    it(`serves info and verified chunks (${encrypt ? 'TLS-PSK' : 'plaintext + bearer'})`, async () => {
      const server = await serve({ encrypt })
      const c = client(encrypt)
      const signal = AbortSignal.timeout(5_000)
      const info = await c.info(ref(a), DIGEST, { signal })
      assert.deepEqual(info, await provider.info(DIGEST))
      assert.equal(await c.info(ref(a), `sha256:${'0'.repeat(64)}`, { signal }), undefined)

      const got = await Promise.all(
        CHUNKS.map(async (_, i) => (i === NOT_HELD ? undefined : sha256(await fetchChunk(c, ref(a), i, signal))))
      )
      got.forEach((hash, i) => {
        if (i !== NOT_HELD) assert.equal(hash, TABLE[i], `chunk ${i}`)
      })
      await assert.rejects(fetchChunk(c, ref(a), NOT_HELD, signal), ChunkUnavailableError)
      await assert.rejects(fetchChunk(c, ref(a), 99, signal), (err: Error & { status?: number }) => err.status === 416)
      await assert.rejects(fetchChunk(c, ref(a), 0, signal, 'sha256:nope'), PeerDataArgumentError)

      const stats = server.stats()
      assert.equal(stats.bytesSent, SIZE - CHUNKS[NOT_HELD]!.length)
      assert.equal(stats.uploads, 0)
      assert.equal(stats.ticketsIssued, 1, 'one ticket, reused by every request')
      assert.equal(c.stats().ticketsFetched, 1)
      assert.equal(c.stats().bytesReceived, stats.bytesSent)
    })
  }

  it('a warm client gets a ticket from a serving peer when it connects, before any request', async () => {
    const server = await serve({ encrypt: true })
    await b.libp2p.hangUp(a.libp2p.peerId)
    const c = client(true, { warm: true })
    assert.equal(c.stats().ticketsFetched, 0)
    await b.libp2p.dial(a.libp2p.getMultiaddrs())
    const deadline = Date.now() + 5_000
    while (c.stats().ticketsFetched === 0 && Date.now() < deadline) await sleep(20)
    assert.equal(c.stats().ticketsFetched, 1, 'a ticket once identify named the ticket protocol')
    assert.equal(server.stats().ticketsIssued, 1)
    assert.deepEqual(await c.info(ref(a), DIGEST, { signal: AbortSignal.timeout(5_000) }), await provider.info(DIGEST))
    assert.equal(c.stats().ticketsFetched, 1, 'the request used the ticket fetched ahead')
  })

  it('holds an info long poll (held=) until the provider answers', async () => {
    await serve({ encrypt: true })
    const c = client(true)
    let release!: () => void
    provider.progress = new Promise((resolve) => {
      release = resolve
    })
    let answered = false
    const pending = c.info(ref(a), DIGEST, { signal: AbortSignal.timeout(5_000), held: 2 }).then((info) => {
      answered = true
      return info
    })
    await waitFor('the long poll to reach the provider', () => provider.waits.includes(2), { timeoutMs: 5_000, intervalMs: 10 })
    await new Promise((resolve) => setTimeout(resolve, 100))
    assert.equal(answered, false, 'no answer while the provider waits')
    release()
    assert.deepEqual(await pending, await provider.info(DIGEST))
    provider.progress = undefined
  })

  it('leaves out of a long poll the hashes the asker names known', async () => {
    const server = await serve({ encrypt: true })
    const c = client(true)
    const full = await provider.info(DIGEST)
    const known = [true, true, false, false, true, false]
    const info = await c.info(ref(a), DIGEST, { signal: AbortSignal.timeout(5_000), held: 3, known: bitfield(known) })
    assert.deepEqual(info?.have, full?.have)
    assert.deepEqual(
      info?.table,
      full?.table?.map((hash, i) => (known[i] || !full.have[i] ? '' : hash)),
      'the hashes of chunks 0, 1 and 4 left out, and of chunk 3, not held; the others sent',
    )
    assert.equal(server.stats().infoAnswered, 1)
  })

  it('names no known chunks to a peer of an older version, whose ticket does not offer it', async () => {
    // an older node: a ticket without `known`, and a data port that answers a parameter it does not know 404
    const full = (await provider.info(DIGEST)) as BlobInfo
    const urls: string[] = []
    const older = createHttpServer((req, res) => {
      urls.push(req.url ?? '')
      const unknown = (req.url ?? '').includes('known=')
      const body = unknown ? '{"error":"Not Found","message":"no such route"}' : encodeInfo(full)
      res.writeHead(unknown ? 404 : 200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    })
    await new Promise<void>((resolve) => older.listen(0, '127.0.0.1', resolve))
    const port = (older.address() as AddressInfo).port
    await a.libp2p.handle(TICKET_PROTOCOL, (stream) => {
      const signal = AbortSignal.timeout(3_000)
      readMessage(stream, 4096, signal)
        .then(() => writeMessage(stream, encodeTicket({ tls: false, port, identity: 'c'.repeat(32), key: 'd'.repeat(64), ttlMs: 600_000 }), signal))
        .catch(() => {})
    })
    try {
      const info = await client(false).info(ref(a), DIGEST, { signal: AbortSignal.timeout(5_000), held: 1, known: bitfield([true, true]) })
      assert.deepEqual(info, full, 'answered, with the whole table')
      assert.equal(urls.length, 1)
      assert.match(urls[0] as string, /held=1/)
      assert.doesNotMatch(urls[0] as string, /known=/)
    } finally {
      await a.libp2p.unhandle(TICKET_PROTOCOL)
      older.close()
    }
  })

  it('a client that requires encryption refuses a plaintext peer; a plaintext client follows a TLS peer', async () => {
    await serve({ encrypt: false })
    await assert.rejects(client(true).info(ref(a), DIGEST, { signal: AbortSignal.timeout(5_000) }), PeerPolicyError)
    await servers.pop()!.close()
    await serve({ encrypt: true })
    assert.ok(await client(false).info(ref(a), DIGEST, { signal: AbortSignal.timeout(5_000) }))
  })

  it('gives a third party without a ticket nothing', async () => {
    const reads = provider.reads
    const tlsServer = await serve({ encrypt: true })
    // TLS with a made-up PSK identity and key: the handshake fails
    for (const identity of ['f'.repeat(32), 'stranger']) {
      const socket = tlsConnect({
        host: '127.0.0.1',
        port: tlsServer.port,
        ciphers: 'PSK-AES128-GCM-SHA256',
        maxVersion: 'TLSv1.2',
        checkServerIdentity: () => undefined,
        pskCallback: () => ({ psk: randomBytes(32), identity })
      })
      const [err] = (await once(socket, 'error')) as [Error]
      assert.match(String((err as { code?: string }).code ?? err.message), /SSL|EPROTO|ECONNRESET/)
      socket.destroy()
    }
    // plain HTTP to the TLS port: no HTTP answer
    await assert.rejects(rawGet(tlsServer.port, `/shoal/v1/blobs/${DIGEST}`))
    assert.ok(tlsServer.stats().rejectedUnauthorized >= 2)
    await servers.pop()!.close()

    const plain = await serve({ encrypt: false })
    assert.equal((await rawGet(plain.port, `/shoal/v1/blobs/${DIGEST}/chunks/0`)).status, 401)
    const forged = { authorization: `Bearer ${'a'.repeat(32)}.${'b'.repeat(64)}` }
    assert.equal((await rawGet(plain.port, `/shoal/v1/blobs/${DIGEST}/chunks/0`, forged)).status, 401)
    assert.equal(provider.reads, reads, 'the provider was never asked')
  })

  it('validates what a ticket holder sends (4xx, never a crash)', async () => {
    const plain = await serve({ encrypt: false })
    // a real ticket, fetched as node B would
    const stream = await b.libp2p.dialProtocol(a.libp2p.getMultiaddrs(), TICKET_PROTOCOL)
    const signal = AbortSignal.timeout(3_000)
    await writeMessage(stream, encodeTicketRequest(), signal)
    const ticket = decodeTicket(await readMessage(stream, 4096, signal))
    assert.equal(ticket.port, plain.port)
    const auth = { authorization: `Bearer ${ticket.identity}.${ticket.key}` }
    const cases: [string, number, string?][] = [
      [`/shoal/v1/blobs/${DIGEST}`, 200],
      [`/shoal/v1/blobs/${DIGEST}/chunks/0`, 200],
      [`/shoal/v1/blobs/${DIGEST}/chunks/${NOT_HELD}`, 404],
      [`/shoal/v1/blobs/${DIGEST}/chunks/6`, 416],
      [`/shoal/v1/blobs/${DIGEST}/chunks/9999999999`, 416],
      [`/shoal/v1/blobs/${DIGEST}/chunks/-1`, 404],
      [`/shoal/v1/blobs/${DIGEST}/chunks/0?x=1`, 404],
      ['/shoal/v1/blobs/sha256:ABC/chunks/0', 400],
      [`/shoal/v1/blobs/md5:${'0'.repeat(32)}`, 400],
      ['/shoal/v1/blobs/..%2f..%2fetc%2fpasswd', 400],
      ['/etc/passwd', 404],
      [`/shoal/v1/blobs/${DIGEST}`, 405, 'POST'],
      [`/shoal/v1/blobs/${DIGEST}`, 405, 'DELETE']
    ]
    for (const [url, status, method] of cases) {
      assert.equal((await rawGet(plain.port, url, auth, method)).status, status, `${method ?? 'GET'} ${url}`)
    }
  })

  it('keeps a node of another private swarm from getting a ticket', async () => {
    await serve({ encrypt: true })
    const c = client(true, { node: outsider, timeoutMs: 1_500 })
    const started = performance.now()
    await assert.rejects(c.info(ref(a), DIGEST, { signal: AbortSignal.timeout(5_000) }), (err: Error) => err instanceof PeerTimeoutError || err instanceof PeerUnreachableError)
    assert.ok(performance.now() - started < 3_000)
    assert.equal(servers[0]!.stats().ticketsIssued, 0)
  })

  it('answers 503 beyond maxUploads, and serves again when a slot frees; a chunk of a sixteenth of the chunk size or less takes no slot', async () => {
    const server = await serve({ encrypt: true, maxUploads: 2 })
    const c = client(true)
    const signal = AbortSignal.timeout(5_000)
    let release!: () => void
    provider.gate = new Promise((resolve) => {
      release = resolve
    })
    const held = [fetchChunk(c, ref(a), 0, signal), fetchChunk(c, ref(a), 1, signal)]
    await waitFor('two uploads in progress', () => server.stats().uploads === 2, { timeoutMs: 3_000 })
    await assert.rejects(fetchChunk(c, ref(a), 2, signal), (err: Error) => err instanceof PeerBusyError && err.retryAfterMs === 1000)
    assert.equal(server.stats().rejectedBusy, 1)
    // the last chunk (1,234 bytes) is under a sixteenth of the chunk size: taken on, slots full or not
    const small = fetchChunk(c, ref(a), 5, signal)
    await waitFor('the small chunk taken on as well', () => server.stats().uploads === 3, { timeoutMs: 3_000 })
    assert.equal(server.stats().rejectedBusy, 1)
    release()
    const bodies = await Promise.all(held)
    assert.equal(sha256(bodies[0]!), TABLE[0])
    assert.equal(sha256(bodies[1]!), TABLE[1])
    assert.equal(sha256(await small), TABLE[5])
    await new Promise((resolve) => setImmediate(resolve))
    assert.equal(server.stats().uploads, 0)
    assert.equal(sha256(await fetchChunk(c, ref(a), 2, signal)), TABLE[2])
  })

  it('frees the slot and aborts the provider when the requester hangs up mid-chunk', async () => {
    const server = await serve({ encrypt: true, maxUploads: 1 })
    const c = client(true)
    provider.gate = new Promise(() => {}) // never
    const controller = new AbortController()
    const body = fetchChunk(c, ref(a), 0, controller.signal)
    await waitFor('the upload in progress', () => server.stats().uploads === 1, { timeoutMs: 3_000 })
    const aborted = provider.aborted
    controller.abort()
    await assert.rejects(body)
    const deadline = Date.now() + 2_000
    while (server.stats().uploads !== 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
    assert.equal(server.stats().uploads, 0)
    assert.equal(provider.aborted, aborted + 1)
  })

  it('limits the upload rate', async () => {
    const rate = 2 * 1024 * 1024
    await serve({ encrypt: false, uploadBytesPerSecond: rate })
    const c = client(false)
    const signal = AbortSignal.timeout(5_000)
    await c.info(ref(a), DIGEST, { signal }) // ticket and connection outside the timing
    const started = performance.now()
    const bodies = await Promise.all([0, 1, 2, 4].map((i) => fetchChunk(c, ref(a), i, signal)))
    const seconds = (performance.now() - started) / 1000
    const bytes = bodies.reduce((n, body) => n + body.length, 0)
    // 1 MiB at 2 MiB/s with a 204.8 KiB burst: at least ~0.4 s
    assert.ok(seconds >= (bytes - rate / 10) / rate - 0.05, `${bytes} bytes in ${seconds.toFixed(2)} s`)
  })

  it('fetches a new ticket when the peer no longer accepts the old one', async () => {
    const server = await serve({ encrypt: true, ticketTtlMs: 1_000 })
    const frozen = Date.now()
    const c = client(true, { now: () => frozen }) // never refreshes on its own
    const signal = AbortSignal.timeout(5_000)
    assert.ok(await c.info(ref(a), DIGEST, { signal }))
    await new Promise((resolve) => setTimeout(resolve, 1_100)) // the server forgets the ticket
    assert.ok(await c.info(ref(a), DIGEST, { signal }), 'kept-alive connection: 401, then a new ticket')
    assert.equal(c.stats().ticketsFetched, 2)
    assert.equal(server.stats().ticketsIssued, 2)
  })
})
