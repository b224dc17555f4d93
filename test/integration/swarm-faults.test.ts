/**
 * The swarm when things go wrong, with real daemons and a real origin on loopback:
 * - a peer killed (SIGKILL) in the middle of a transfer: the download completes with the right
 *   bytes, from the other peer or origin;
 * - a peer that serves corrupted chunks (built from the project's peer parts, see
 *   helpers/bad-peer.ts): the download completes with the right bytes, the peer is penalised,
 *   and nothing wrong reaches the client or the store;
 * - the DHT unreachable (bootstrap to dead addresses, or a swarm whose only peer died): the
 *   mirror serves from origin, and fast.
 */
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { type BadPeer, peerRef, startBadPeer } from '../helpers/bad-peer.js'
import { type BlobSpec, pushBlob } from '../helpers/images.js'
import { freePort, waitFor } from '../helpers/proc.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { startShoal } from '../helpers/shoal.js'
import {
  asSwarmNode,
  blobUrl,
  type Fleet,
  hashGet,
  keepLogs,
  logTail,
  type SwarmNode,
  startFleet,
  swarmFetchLine,
  waitAnnounced,
  waitJoined,
} from '../helpers/swarm.js'

const REG = 'origin.test'
const NAME = 'faults/app'
const MiB = 1024 * 1024

let origin: OriginRegistry
let killBlob: BlobSpec
let corruptBlob: BlobSpec
let plainBlob: BlobSpec

before(async () => {
  origin = await startOriginRegistry()
  ;[killBlob, corruptBlob, plainBlob] = await Promise.all([
    pushBlob(origin.url, NAME, 'faults-kill-24MiB', 24 * MiB),
    pushBlob(origin.url, NAME, 'faults-corrupt-24MiB', 24 * MiB),
    pushBlob(origin.url, NAME, 'faults-plain-8MiB', 8 * MiB),
  ])
})

after(async () => {
  await origin?.close()
})

describe('a peer killed mid-transfer', { timeout: 60_000 }, () => {
  const nodes: SwarmNode[] = []

  after(async () => {
    await keepLogs(nodes)
    await Promise.allSettled(nodes.map((n) => n.close()))
  })

  test('the download completes with the right bytes from the other peer (or origin)', async () => {
    // A and B fetch the blob from origin while alone, then seed it at 4 MiB/s each, so a
    // 24 MiB download through C takes a few seconds and A can die in the middle of it.
    const seedEnv = { SHOAL_P2P_UPLOAD_RATE: '4MiB' }
    const [a, b] = await Promise.all(
      [1, 2].map(async (i) => asSwarmNode(await startShoal({ upstreams: { [REG]: origin.url }, env: seedEnv, logLevel: 'debug' }), i)),
    )
    nodes.push(a!, b!)
    for (const seed of [a!, b!]) assert.equal((await hashGet(blobUrl(seed, NAME, killBlob.digest, REG))).digest, killBlob.digest)
    const c = await asSwarmNode(
      await startShoal({ upstreams: { [REG]: origin.url }, logLevel: 'debug', args: ['--bootstrap', a!.p2pAddr, '--bootstrap', b!.p2pAddr] }),
      3,
    )
    nodes.push(c)
    await waitJoined([a!, b!, c])
    await waitAnnounced(a!, [killBlob.digest])
    await waitAnnounced(b!, [killBlob.digest])

    const mark = origin.mark()
    const started = performance.now()
    const download = hashGet(blobUrl(c, NAME, killBlob.digest, REG))
    let finished = false
    download.then(
      () => {
        finished = true
      },
      () => {}, // awaited below
    )
    // kill A once it has sent C some bytes, while C's download still runs (asserted below)
    await waitFor('A to start sending', async () => (await a!.p2p()).bytesToPeers >= MiB, { timeoutMs: 15_000, intervalMs: 20 })
    const sentByA = (await a!.p2p()).bytesToPeers
    await a!.proc.stop('SIGKILL')
    const killedAtMs = performance.now() - started
    const finishedAtKill = finished

    const got = await download
    const p2p = await c.p2p()
    const line = await swarmFetchLine(c, killBlob.digest)
    const detail = `A sent ${sentByA} bytes, killed at ${Math.round(killedAtMs)} ms; C: ${JSON.stringify(p2p)}; bySource ${JSON.stringify(line?.bySource)}\n${await logTail(c, 20, (m) => m !== 'request')}`
    assert.equal(got.status, 200, detail)
    assert.equal(got.bytes, killBlob.size, detail)
    assert.equal(got.digest, killBlob.digest, detail)
    assert.ok(!finishedAtKill && sentByA < killBlob.size, `A was killed mid-transfer: ${detail}`)
    await origin.flush()
    const fromOrigin = origin.blobBytesSince(mark, killBlob.digest)
    const fromB = p2p.bytesFromPeer[b!.peerId] ?? 0
    const fromA = p2p.bytesFromPeer[a!.peerId] ?? 0
    assert.ok(fromB > 0, `B sent C bytes: ${detail}`)
    assert.ok(fromA < killBlob.size, detail)
    assert.ok(fromA + fromB + fromOrigin >= killBlob.size, `every chunk came from somewhere: origin ${fromOrigin}; ${detail}`)
    console.log(`# killed A at ${Math.round(killedAtMs)} ms (A had sent ${sentByA} bytes); C done in ${Math.round(got.totalMs)} ms: A ${fromA}, B ${fromB}, origin ${fromOrigin}`)
    // the store holds the right bytes
    const again = await hashGet(blobUrl(c, NAME, killBlob.digest, REG))
    assert.equal(again.digest, killBlob.digest)
  })
})

describe('a peer that serves corrupted chunks', { timeout: 60_000 }, () => {
  let fleet: Fleet
  let bad: BadPeer | undefined

  before(async () => {
    // A alone first: it fetches the blob from origin by itself (with peers around, the nodes
    // closest to the blob's key could be asked to fetch a share of it, and C would hold it before
    // it ever asks the bad peer)
    fleet = await startFleet(1, { upstreams: { [REG]: origin.url }, logLevel: 'debug' })
  })

  after(async () => {
    await bad?.close()
    await fleet?.close()
  })

  test('the download completes with the right bytes, the peer is penalised, the store holds only right bytes', async () => {
    const a = fleet.nodes[0]!
    assert.equal((await hashGet(blobUrl(a, NAME, corruptBlob.digest, REG))).digest, corruptBlob.digest)

    const peer = await startBadPeer({ bootstrap: [a.p2pAddr] })
    bad = peer
    await waitAnnounced(a, [corruptBlob.digest]) // once it has a peer to store the record on
    const aStatus = await a.p2p()
    const claim = await peer.hold(corruptBlob.digest, peerRef(aStatus.peerId, aStatus.listen))
    assert.equal(claim.size, corruptBlob.size)
    assert.ok(claim.have.length >= 3, `${claim.have.length} chunks`)
    const c = await fleet.add()
    await waitJoined([c])

    const mark = origin.mark()
    const got = await hashGet(blobUrl(c, NAME, corruptBlob.digest, REG))
    const p2p = await c.p2p()
    const logs = await c.logs()
    const penalised = logs.filter((l) => l.msg.includes('failed verification') && l['peer'] === peer.peerId)
    const detail = `bad peer served ${peer.corruptChunksServed} corrupt chunk(s); C: ${JSON.stringify(p2p)}\n${await logTail(c, 20, (m) => m !== 'request')}`
    assert.equal(got.status, 200, detail)
    assert.equal(got.bytes, corruptBlob.size, detail)
    assert.equal(got.digest, corruptBlob.digest, detail)
    assert.ok(peer.corruptChunksServed >= 1, `C asked the bad peer for chunks: ${detail}`)
    assert.ok(p2p.penalisedPeers >= 1, `the bad peer is penalised: ${detail}`)
    assert.ok(penalised.length >= 1, `a log line names the bad peer: ${detail}`)
    assert.ok(!(p2p.bytesFromPeer[peer.peerId] ?? 0), `no byte from the bad peer was accepted: ${detail}`)
    const badChunks = /^shoal_p2p_bad_chunks_total (\S+)$/m.exec(await c.metrics())
    assert.ok(Number(badChunks?.[1] ?? 0) >= 1, `shoal_p2p_bad_chunks_total: ${badChunks?.[0]}`)
    await origin.flush()
    console.log(`# bad peer served ${peer.corruptChunksServed} corrupt chunk(s); C took ${JSON.stringify(p2p.bytesFromPeer)} from peers, ${origin.blobBytesSince(mark, corruptBlob.digest)} bytes from origin`)

    // what the store holds hashes right, served from the store
    const requests = (await c.requests()).length
    const again = await hashGet(blobUrl(c, NAME, corruptBlob.digest, REG))
    assert.equal(again.digest, corruptBlob.digest)
    // (the request's log line may land a moment after its response)
    let line: Awaited<ReturnType<typeof c.requests>>[number] | undefined
    await waitFor('the second GET logged', async () => {
      line = (await c.requests()).slice(requests).find((l) => l.path?.includes(corruptBlob.digest))
      return line !== undefined
    })
    assert.equal(line?.source, 'cache', JSON.stringify(line))
    // and a ranged read across the corrupted offsets too
    const mid = claim.chunkSize >> 1
    const ranged = await fetch(blobUrl(c, NAME, corruptBlob.digest, REG), { headers: { range: `bytes=${mid - 8}-${mid + 7}` } })
    assert.equal(ranged.status, 206)
    const direct = await fetch(`${origin.url}/v2/${NAME}/blobs/${corruptBlob.digest}`, { headers: { range: `bytes=${mid - 8}-${mid + 7}` } })
    assert.deepEqual(Buffer.from(await ranged.arrayBuffer()), Buffer.from(await direct.arrayBuffer()))
  })
})

describe('the DHT unreachable', { timeout: 60_000 }, () => {
  const nodes: SwarmNode[] = []

  after(async () => {
    await keepLogs(nodes)
    await Promise.allSettled(nodes.map((n) => n.close()))
  })

  test('bootstrap to dead addresses: the mirror serves from origin, fast', async () => {
    const dead = await freePort() // nothing listens there
    const args = ['--bootstrap', `/ip4/127.0.0.1/tcp/${dead}`, '--bootstrap', '/ip4/192.0.2.1/tcp/4001'] // TEST-NET-1: never answers
    const node = await asSwarmNode(await startShoal({ upstreams: { [REG]: origin.url }, args, logLevel: 'debug' }), 1)
    nodes.push(node)
    const mark = origin.mark()
    const got = await hashGet(blobUrl(node, NAME, plainBlob.digest, REG))
    assert.equal(got.status, 200)
    assert.equal(got.digest, plainBlob.digest)
    assert.ok(got.totalMs < 5_000, `first blob GET took ${Math.round(got.totalMs)} ms`)
    await origin.flush()
    assert.equal(origin.blobBytesSince(mark, plainBlob.digest), plainBlob.size)
    const p2p = await node.p2p()
    assert.equal(p2p.joined, false)
    assert.equal(p2p.connectedPeers, 0)
    const ready = await fetch(`${node.url}/readyz`)
    assert.equal(ready.status, 200, 'a lone node is still a working mirror')
    assert.equal(((await ready.json()) as { swarm?: { joined: boolean } }).swarm?.joined, false)
    console.log(`# isolated node: first blob GET ${Math.round(got.totalMs)} ms (first byte ${Math.round(got.firstByteMs)} ms)`)
  })

  test('the only peer died (SIGKILL): the mirror serves from origin, fast', async () => {
    const seed = await asSwarmNode(await startShoal({ upstreams: { [REG]: origin.url }, logLevel: 'debug' }), 1)
    nodes.push(seed)
    const node = await asSwarmNode(await startShoal({ upstreams: { [REG]: origin.url }, args: ['--bootstrap', seed.p2pAddr], logLevel: 'debug' }), 2)
    nodes.push(node)
    await waitJoined([seed, node])
    await seed.proc.stop('SIGKILL')
    const before = await node.p2p()
    const got = await hashGet(blobUrl(node, NAME, plainBlob.digest, REG))
    assert.equal(got.status, 200)
    assert.equal(got.digest, plainBlob.digest)
    assert.ok(got.totalMs < 5_000, `first blob GET took ${Math.round(got.totalMs)} ms (status before: ${JSON.stringify(before)})`)
    assert.equal((await node.p2p()).bytesFromPeers, 0)
    console.log(`# node whose peer died (joined=${before.joined}, table=${before.routingTableSize}): first blob GET ${Math.round(got.totalMs)} ms`)
  })
})
