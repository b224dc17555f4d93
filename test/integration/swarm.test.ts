/**
 * The swarm on loopback, with real daemons and a real origin (distribution 2.8.2):
 * - 5 daemons bootstrapped from node 1; node 1 pulls an image from origin, nodes 2-5 then pull it
 *   with no blob request to origin (counted in origin's own access log), every body verified;
 * - a blob held by three peers reaches a fresh node from more than one of them;
 * - a private swarm: nodes holding the swarm key share blobs, a node without it (or with another
 *   key) never connects and pulls from origin.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, before, describe, test } from 'node:test'
import { type BlobSpec, type PushedImage, pushBlob, pushImage } from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { startShoal } from '../helpers/shoal.js'
import {
  asSwarmNode,
  blobUrl,
  keepLogs,
  type Fleet,
  fetchedBytes,
  hashGet,
  logTail,
  pullImage,
  type SwarmNode,
  startFleet,
  swarmFetchLine,
  waitAnnounced,
  waitJoined,
  waitSettled,
  writeSwarmKey,
} from '../helpers/swarm.js'

const REG = 'origin.test'
const MiB = 1024 * 1024

function blobGets(origin: OriginRegistry, mark: number, digest?: string) {
  return origin.requestsSince(mark, (e) => e.method === 'GET' && e.path.includes('/blobs/') && (digest === undefined || e.path.includes(digest)))
}

describe('swarm: origin + 5 daemons bootstrapped from node 1', { timeout: 60_000 }, () => {
  let origin: OriginRegistry
  let fleet: Fleet
  let image: PushedImage
  let shared: BlobSpec
  let n: SwarmNode[]

  before(async () => {
    origin = await startOriginRegistry()
    // 3 layers of 5 MiB (5 chunks each at the default 1 MiB), and a 24 MiB blob (24 chunks)
    ;[image, shared] = await Promise.all([
      pushImage(origin.url, 'swarm/app', 'v1', { layers: 3, layerSize: 5 * MiB, format: 'oci' }),
      pushBlob(origin.url, 'swarm/app', 'swarm-shared-24MiB', 24 * MiB),
    ])
    // (a blob completed in a fan-out is announced at once, not spread over p2p.announceSpread: these tests wait for the records)
    fleet = await startFleet(5, { upstreams: { [REG]: origin.url }, logLevel: 'debug', env: { SHOAL_P2P_ANNOUNCE_SPREAD: '0s' } })
    n = fleet.nodes
  })

  after(async () => {
    await fleet?.close()
    await origin?.close()
  })

  test('every node has joined: status and readiness say so', async () => {
    for (const node of n) {
      const p2p = await node.p2p()
      assert.equal(p2p.joined, true, `node ${node.index} joined`)
      assert.ok(p2p.connectedPeers >= 1, `node ${node.index} connected peers: ${p2p.connectedPeers}`)
      assert.ok(p2p.routingTableSize >= 1, `node ${node.index} routing table: ${p2p.routingTableSize}`)
      assert.match(p2p.peerId, /^12D3KooW/)
      assert.ok(p2p.listen.length > 0 && p2p.listen.every((a) => a.endsWith(`/p2p/${p2p.peerId}`)), JSON.stringify(p2p.listen))
      assert.equal(p2p.bytesFromPeers, 0)
      const ready = await fetch(`${node.url}/readyz`)
      assert.equal(ready.status, 200)
      const body = (await ready.json()) as { ready: boolean; swarm?: { joined: boolean; peers: number } }
      assert.equal(body.ready, true)
      assert.equal(body.swarm?.joined, true)
      assert.ok((body.swarm?.peers ?? 0) >= 1)
    }
    assert.equal((await n[0]!.p2p()).routingTableSize, 4, 'node 1 knows the 4 others')
  })

  // Origin's log cannot tell the nodes apart (all on 127.0.0.1), and while node 1 pulls, the
  // nodes closest to each blob's DHT key may fetch a share of it from origin as its origin
  // fetchers (and go on to hold the whole blob). What must hold whoever fetches: once node 1's
  // pull and what it set off are over, nodes 2-5 pull without a single blob request to origin,
  // and every byte a node stores came once, from peers or origin.
  test('node 1 pulls from origin; nodes 2-5 get the image from peers, origin sends nothing more', async () => {
    const blobs = [image.config, ...image.layers]
    const total = blobs.reduce((sum, b) => sum + b.size, 0)

    const mark1 = origin.mark()
    const started = performance.now()
    await pullImage(n[0]!, REG, image)
    const pullMs = performance.now() - started
    await waitSettled(n)
    await origin.flush()
    const phase1 = origin.blobBytesSince(mark1)
    console.log(`# node 1 pulled ${total} bytes in ${Math.round(pullMs)} ms; origin sent ${phase1} blob bytes (${(phase1 / total).toFixed(2)}x) in ${blobGets(origin, mark1).length} GETs`)
    assert.ok(phase1 >= total, `origin sent ${phase1} of ${total} blob bytes`)

    await waitAnnounced(n[0]!, blobs.map((b) => b.digest))
    const mark = origin.mark()
    await Promise.all(n.slice(1).map((node) => pullImage(node, REG, image)))
    await origin.flush()

    assert.deepEqual(blobGets(origin, mark), [], 'origin saw no blob GET while nodes 2-5 pulled')
    const fromOrigin: number[] = []
    for (const node of n) {
      const p2p = await node.p2p()
      const metrics = await node.metrics()
      const peer = fetchedBytes(metrics, 'peer')
      const org = fetchedBytes(metrics, 'origin')
      fromOrigin.push(org)
      const why = `node ${node.index}: metrics peer ${peer} origin ${org}; ${JSON.stringify(p2p)}\n${await logTail(node, 15, (m) => m !== 'request')}`
      assert.equal(peer + org, total, `every blob byte of node ${node.index} came once, from peers or origin; ${why}`)
      assert.equal(p2p.bytesFromPeers, peer, `status and metrics agree; ${why}`)
      if (node.index > 1) {
        assert.ok(p2p.bytesFromPeers > 0, `node ${node.index} received bytes from peers; ${why}`)
        assert.ok(Object.keys(p2p.bytesFromPeer).every((id) => n.some((other) => other.peerId === id && other !== node)), why)
      }
    }
    const stored = fromOrigin.reduce((a, b) => a + b, 0)
    console.log(`# image of ${total} bytes; origin bytes stored by nodes 1-5: ${fromOrigin.join(', ')}`)
    assert.ok(stored >= total && stored <= phase1, `origin bytes stored by nodes 1-5: ${fromOrigin.join(', ')}; origin sent ${phase1}`)
    assert.ok((await n[0]!.p2p()).bytesToPeers > 0, 'node 1 served peers')
    // the stores hold the right bytes: a second GET is served from the store, and verifies
    for (const node of n.slice(1)) {
      for (const blob of blobs) {
        const again = await hashGet(blobUrl(node, image.name, blob.digest, REG))
        assert.equal(again.digest, blob.digest)
      }
    }
  })

  test('a blob held by three peers reaches a fresh node from more than one of them', async () => {
    const url = (node: SwarmNode) => blobUrl(node, 'swarm/app', shared.digest, REG)
    const mark1 = origin.mark()
    assert.equal((await hashGet(url(n[0]!))).digest, shared.digest)
    await waitAnnounced(n[0]!, [shared.digest])
    const results = await Promise.all([hashGet(url(n[1]!)), hashGet(url(n[2]!))])
    for (const r of results) assert.equal(r.digest, shared.digest)
    await waitAnnounced(n[1]!, [shared.digest])
    await waitAnnounced(n[2]!, [shared.digest])
    await waitSettled(n)
    await origin.flush()
    const sent = origin.blobBytesSince(mark1, shared.digest)
    assert.ok(sent >= shared.size, `origin sent ${sent} bytes of the blob`)

    const puller = await fleet.add()
    await waitJoined([puller])
    assert.equal((await puller.p2p()).bytesFromPeers, 0)
    const mark = origin.mark()
    const got = await hashGet(url(puller))
    assert.equal(got.status, 200)
    assert.equal(got.digest, shared.digest)
    assert.equal(got.bytes, shared.size)
    await origin.flush()
    assert.deepEqual(blobGets(origin, mark, shared.digest), [], 'origin saw no GET of the blob from the fresh node')

    const p2p = await puller.p2p()
    const sources = Object.entries(p2p.bytesFromPeer).filter(([, bytes]) => bytes > 0)
    const line = await swarmFetchLine(puller, shared.digest)
    const detail = `bytesFromPeer ${JSON.stringify(p2p.bytesFromPeer)}; log bySource ${JSON.stringify(line?.bySource)}`
    assert.ok(sources.length >= 2, `the fresh node received from at least 2 peers: ${detail}`)
    assert.ok(sources.every(([peer]) => n.some((node) => node.peerId === peer && node !== puller)), `only fleet nodes sent bytes: ${detail}`)
    assert.equal(p2p.bytesFromPeers, shared.size, detail)
    if (line !== undefined) {
      assert.ok(Object.keys(line.bySource).filter((k) => k !== 'origin').length >= 2, detail)
    }
    console.log(`# fresh node: ${detail}`)
  })

  test('no daemon printed a process warning (a deprecated option, an abort signal past its listener limit)', async () => {
    for (const node of fleet.nodes) assert.deepEqual(await node.warnings(), [], `node ${node.index}`)
  })
})

describe('private swarm: only nodes holding the swarm key connect', { timeout: 60_000 }, () => {
  let origin: OriginRegistry
  let fleet: Fleet
  let dir: string
  let blob: BlobSpec
  const outsiders: SwarmNode[] = []

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-pnet-'))
    const key = await writeSwarmKey(join(dir, 'swarm.key'))
    await writeSwarmKey(join(dir, 'other.key'))
    origin = await startOriginRegistry()
    blob = await pushBlob(origin.url, 'private/app', 'private-swarm-6MiB', 6 * MiB)
    // A alone; B joins once A holds the blob (see the 5-node test on origin fetchers)
    fleet = await startFleet(1, { upstreams: { [REG]: origin.url }, logLevel: 'debug', swarmKeyFile: key })
  })

  after(async () => {
    await keepLogs(outsiders)
    await Promise.allSettled(outsiders.map((o) => o.close()))
    await fleet?.close()
    await origin?.close()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  test('nodes with the key share blobs', async () => {
    const a = fleet.nodes[0]!
    assert.equal((await a.p2p()).privateSwarm, true)
    assert.equal((await hashGet(blobUrl(a, 'private/app', blob.digest, REG))).digest, blob.digest)
    const b = await fleet.add()
    await waitJoined([a, b])
    await waitAnnounced(a, [blob.digest])
    const mark = origin.mark()
    assert.equal((await hashGet(blobUrl(b, 'private/app', blob.digest, REG))).digest, blob.digest)
    await origin.flush()
    const p2p = await b.p2p()
    const fromOrigin = fetchedBytes(await b.metrics(), 'origin')
    const detail = `B: origin ${fromOrigin}; ${JSON.stringify(p2p)}\n${await logTail(b, 15, (m) => m !== 'request')}`
    assert.deepEqual(blobGets(origin, mark), [], detail)
    assert.equal(fromOrigin, 0, detail)
    assert.equal(p2p.bytesFromPeers, blob.size, detail)
  })

  for (const variant of ['no swarm key', 'another swarm key'] as const) {
    test(`a node with ${variant} never connects and pulls from origin`, async () => {
      const seed = fleet.nodes[0]!
      const args = ['--bootstrap', seed.p2pAddr]
      if (variant === 'another swarm key') args.push('--swarm-key', join(dir, 'other.key'))
      const outsider = await asSwarmNode(await startShoal({ upstreams: { [REG]: origin.url }, args, logLevel: 'debug' }), 9)
      outsiders.push(outsider)
      // bootstrap retries for a few seconds: it must never get a connection
      for (let t = 0; t < 3_000; t += 250) {
        const p2p = await outsider.p2p()
        assert.equal(p2p.connectedPeers, 0, `${variant}: connected ${JSON.stringify(p2p)}`)
        assert.equal(p2p.joined, false)
        assert.equal(p2p.routingTableSize, 0)
        await sleep(250)
      }
      const ready = (await (await fetch(`${outsider.url}/readyz`)).json()) as { ready: boolean; swarm?: { joined: boolean } }
      assert.equal(ready.ready, true, 'a lone node is still a working mirror')
      assert.equal(ready.swarm?.joined, false)
      const seedPeers = await Promise.all(fleet.nodes.map((node) => node.p2p()))
      for (const p of seedPeers) assert.ok(!(p.bytesFromPeer[outsider.peerId] ?? 0), 'no bytes from the outsider')

      const mark = origin.mark()
      const got = await hashGet(blobUrl(outsider, 'private/app', blob.digest, REG))
      assert.equal(got.digest, blob.digest)
      await origin.flush()
      assert.equal(blobGets(origin, mark, blob.digest).length, 1, 'the outsider pulled from origin')
      const p2p = await outsider.p2p()
      assert.equal(p2p.bytesFromPeers, 0)
      assert.equal(p2p.connectedPeers, 0)
      const seedStatus = await seed.p2p()
      assert.equal(seedStatus.connectedPeers, fleet.nodes.length - 1, 'the seed is connected to its keyed peers only')
    })
  }
})
