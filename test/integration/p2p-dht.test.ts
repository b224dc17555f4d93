import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import { multiaddr } from '@multiformats/multiaddr'
import { pino } from 'pino'
import {
  PEER_KEY_FILE,
  type PeerNode,
  type PeerNodeOptions,
  SwarmKeyError,
  createPeerNode,
  generateSwarmKey,
  parseSwarmKey
} from '../../src/p2p/node.js'
import { NoPeersError, type PeerRef } from '../../src/routing/types.js'

const LOOPBACK = ['/ip4/127.0.0.1/tcp/0']
const logger = pino({ level: process.env['SHOAL_TEST_LOG'] ?? 'silent' })

function digestOf(data: string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

function bare(addr: string): string {
  return addr.replace(/\/p2p\/[^/]+$/, '')
}

async function waitFor(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  await new Promise((resolve) => server.close(resolve))
  assert.ok(address !== null && typeof address === 'object')
  return address.port
}

async function collect(node: PeerNode, digest: string, options?: { limit?: number; timeoutMs?: number }): Promise<PeerRef[]> {
  const out: PeerRef[] = []
  for await (const ref of node.router.lookup(digest, options)) out.push(ref)
  return out
}

describe('p2p: libp2p node and kad-dht content routing', { timeout: 30_000 }, () => {
  let root: string
  const nodes: PeerNode[] = []
  const cluster: PeerNode[] = []

  async function start(name: string, options: Partial<PeerNodeOptions> = {}): Promise<PeerNode> {
    const node = await createPeerNode({
      dataDir: path.join(root, name),
      listen: LOOPBACK,
      bootstrap: [],
      logger: logger.child({ node: name }),
      bootstrapRetry: { minDelayMs: 100, maxDelayMs: 1_000, dialTimeoutMs: 2_000 },
      ...options
    })
    nodes.push(node)
    return node
  }

  before(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'shoal-p2p-'))
    const first = await start('n1')
    const addr = first.status().listenAddrs[0] ?? ''
    assert.ok(addr.includes('/p2p/'), `node 1 announces ${addr}`)
    // node 2 knows node 1 only by address, without /p2p/<id>
    const rest = await Promise.all([
      start('n2', { bootstrap: [bare(addr)] }),
      start('n3', { bootstrap: [addr] }),
      start('n4', { bootstrap: [addr] }),
      start('n5', { bootstrap: [addr] })
    ])
    cluster.push(first, ...rest)
    await waitFor(
      'node 1 to know every node',
      () => cluster.every((n) => n.router.ready()) && first.status().routingTableSize === 4,
      10_000
    )
  })

  after(async () => {
    const results = await Promise.allSettled(nodes.map((node) => node.stop()))
    await rm(root, { recursive: true, force: true })
    for (const result of results) if (result.status === 'rejected') throw result.reason
  })

  it('bootstraps every node from node 1, including via an address without /p2p/', () => {
    const [n1, n2] = cluster
    assert.ok(n1 && n2)
    assert.equal(cluster.length, 5)
    assert.ok(
      n2.libp2p.getPeers().some((p) => p.toString() === n1.peerId),
      'node 2 is connected to node 1'
    )
    for (const node of cluster) {
      const status = node.status()
      assert.equal(status.peerId, node.peerId)
      assert.ok(status.routingTableSize >= 1, `${node.peerId} routing table`)
      assert.ok(status.connectedPeers >= 1)
      assert.ok(status.listenAddrs.every((a) => a.startsWith('/ip4/127.0.0.1/tcp/')))
    }
    assert.equal(cluster[0]!.status().routingTableSize, 4, 'node 1 knows every other node')
  })

  it('node 5 finds node 3 within 3 s of node 3 advertising', async () => {
    const [, , n3, , n5] = cluster
    assert.ok(n3 && n5)
    const digest = digestOf('shared layer')
    await n3.router.advertise(digest)
    assert.deepEqual(n3.router.advertised(), [digest])

    const started = performance.now()
    let found: PeerRef | undefined
    for await (const ref of n5.router.lookup(digest, { timeoutMs: 3_000 })) {
      if (ref.id === n3.peerId) {
        found = ref
        break
      }
    }
    const ms = performance.now() - started
    assert.ok(found, 'node 3 found')
    assert.ok(ms < 3_000, `found in ${Math.round(ms)} ms`)
    assert.ok(found.addrs.length > 0)
    for (const addr of found.addrs) {
      assert.ok(!addr.includes('/p2p/'), addr)
      assert.equal(multiaddr(addr).getComponents()[0]?.value, '127.0.0.1')
    }
    // de-duplicated, self excluded
    const fromN5 = await collect(n5, digest)
    assert.deepEqual(
      fromN5.map((r) => r.id),
      [n3.peerId]
    )
    assert.deepEqual(await collect(n3, digest), [], 'node 3 does not find itself')
    assert.deepEqual(await collect(n5, digestOf('nobody has this'), { timeoutMs: 1_000 }), [])

    await n3.router.withdraw(digest)
    assert.deepEqual(n3.router.advertised(), [])
  })

  it('stops a lookup after `limit` providers', async () => {
    const digest = digestOf('popular layer')
    await Promise.all(cluster.slice(0, 4).map((n) => n.router.advertise(digest)))
    const n5 = cluster[4]!
    const two = await collect(n5, digest, { limit: 2 })
    assert.equal(two.length, 2)
    const all = await collect(n5, digest)
    assert.equal(new Set(all.map((r) => r.id)).size, all.length, 'de-duplicated')
    assert.equal(all.length, 4)
  })

  it('keeps its peer id across a restart; peer.key is mode 0600', async () => {
    const name = 'restart'
    const first = await start(name)
    const id = first.peerId
    await first.stop()
    const keyFile = path.join(root, name, PEER_KEY_FILE)
    assert.equal((await stat(keyFile)).mode & 0o777, 0o600)
    const second = await start(name)
    assert.equal(second.peerId, id)
    assert.equal((await stat(keyFile)).mode & 0o777, 0o600)
    await second.stop()
  })

  it('returns from a lookup on an empty routing table within 100 ms; advertise fails fast', async () => {
    const lone = await start('lone')
    assert.equal(lone.router.ready(), false)
    const started = performance.now()
    const found = await collect(lone, digestOf('anything'))
    const ms = performance.now() - started
    assert.deepEqual(found, [])
    assert.ok(ms < 100, `lookup returned in ${ms.toFixed(1)} ms`)
    const advertiseStarted = performance.now()
    await assert.rejects(lone.router.advertise(digestOf('anything')), NoPeersError)
    assert.ok(performance.now() - advertiseStarted < 100)
    await lone.stop()
  })

  it('keeps nodes with another swarm key (or none) out of a private swarm', async () => {
    const keyA = path.join(root, 'swarm-a.key')
    const keyB = path.join(root, 'swarm-b.key')
    await writeFile(keyA, generateSwarmKey(), { mode: 0o600 })
    await writeFile(keyB, generateSwarmKey(), { mode: 0o600 })

    const p1 = await start('private-1', { swarmKeyFile: keyA })
    const p1Addr = p1.status().listenAddrs[0]!
    const p2 = await start('private-2', { swarmKeyFile: keyA, bootstrap: [p1Addr] })
    await waitFor('the node with the same key to join', () => p2.router.ready() && p1.router.ready(), 5_000)

    const outsider = await start('private-other', { swarmKeyFile: keyB })
    // a wrong key does not fail fast: the handshake reads garbage until the dial times out
    await assert.rejects(outsider.libp2p.dial(multiaddr(p1Addr), { signal: AbortSignal.timeout(1_500) }))
    const open = cluster[0]!
    await assert.rejects(open.libp2p.dial(multiaddr(p1Addr), { signal: AbortSignal.timeout(1_500) }))
    assert.deepEqual(
      p1.libp2p.getPeers().map(String),
      [p2.peerId],
      'only the node with the same key is connected'
    )
    assert.equal(outsider.router.ready(), false)
    await Promise.all([p1.stop(), p2.stop(), outsider.stop()])
  })

  it('retries bootstrap until the seed appears, again when it goes, and announces what was pending', async () => {
    const port = await freePort()
    const seedListen = [`/ip4/127.0.0.1/tcp/${port}`]
    const joiner = await start('joiner', { bootstrap: [`dns:localhost:${port}`] })
    const digest = digestOf('cached before anyone was around')
    await assert.rejects(joiner.router.advertise(digest), NoPeersError)
    await new Promise((resolve) => setTimeout(resolve, 400)) // a few failed rounds

    const seed = await start('seed', { listen: seedListen })
    await waitFor('the joiner to reach the late seed', () => joiner.router.ready() && seed.router.ready(), 4_000)
    // the pending digest goes out once the routing table has a peer
    await waitFor(
      'the pending advertisement',
      async () => (await collect(seed, digest, { timeoutMs: 500 })).some((r) => r.id === joiner.peerId),
      5_000
    )

    // the seed goes away and a new node (new peer id) takes its address
    await seed.stop()
    await waitFor('the joiner to notice', () => joiner.libp2p.getConnections().length === 0, 3_000)
    const replacement = await start('seed-2', { listen: seedListen })
    await waitFor(
      'the joiner to reconnect through the same bootstrap entry',
      () => joiner.libp2p.getPeers().some((p) => p.toString() === replacement.peerId),
      4_000
    )
    await Promise.all([joiner.stop(), replacement.stop()])
  })

  it('validates swarm key files', () => {
    const key = generateSwarmKey()
    assert.match(key, /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}\n$/)
    assert.equal(new TextDecoder().decode(parseSwarmKey(key.replace(/\n/g, '\r\n'))), key.trimEnd())
    for (const bad of ['', key.replace('/base16/', '/base64/'), key.slice(0, -3), key.replace('psk', 'xyz')]) {
      assert.throws(() => parseSwarmKey(bad), SwarmKeyError)
    }
  })
})
