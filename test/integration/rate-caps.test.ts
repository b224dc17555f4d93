/**
 * The per-node caps of the swarm (`p2p.uploadRate`, `p2p.downloadRate`), with real daemons and a
 * real origin on loopback, where an uncapped 16 MiB transfer takes a fraction of a second:
 * - a seeder capped at 4 MiB/s sends a node the blob no faster than that;
 * - a node capped at 4 MiB/s receives a blob no faster than that, from a peer that is not
 *   capped, and one that no node holds yet (which the two fetch from origin once between them);
 * - and so does a node alone (its swarm off), from origin, as one stream.
 * Each cap lets a burst through first (a tenth of the rate, at least 64 KiB), so the bound
 * asserted is the blob less that burst, at the cap, less 10% for the clocks.
 */
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { TokenBucket } from '../../src/peer/rate-limit.js'
import { type BlobSpec, pushBlob } from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { type Shoal, startShoal } from '../helpers/shoal.js'
import { asSwarmNode, blobUrl, hashGet, keepLogs, type SwarmNode, waitAnnounced, waitJoined } from '../helpers/swarm.js'

const REG = 'origin.test'
const NAME = 'caps/app'
const MiB = 1024 * 1024
const CAP = 4 * MiB
const SIZE = 16 * MiB
/** the least time a capped transfer of SIZE bytes can take: its burst passes at once */
const FLOOR_MS = (0.9 * 1000 * (SIZE - new TokenBucket({ rate: CAP }).burst)) / CAP

let origin: OriginRegistry
let viaCappedSeeder: BlobSpec
let toCappedNode: BlobSpec
let fresh16: BlobSpec
let alone16: BlobSpec
const nodes: SwarmNode[] = []
const swarmless: Shoal[] = []

before(async () => {
  origin = await startOriginRegistry()
  ;[viaCappedSeeder, toCappedNode, fresh16, alone16] = await Promise.all([
    pushBlob(origin.url, NAME, 'caps-upload-16MiB', SIZE),
    pushBlob(origin.url, NAME, 'caps-download-16MiB', SIZE),
    pushBlob(origin.url, NAME, 'caps-origin-16MiB', SIZE),
    pushBlob(origin.url, NAME, 'caps-alone-16MiB', SIZE),
  ])
})

after(async () => {
  await keepLogs(nodes)
  await Promise.allSettled([...nodes, ...swarmless].map((n) => n.close()))
  await origin?.close()
})

/** a daemon of the swarm (bootstrapped from `seeds`) with these settings */
async function node(index: number, env: Record<string, string>, seeds: SwarmNode[] = []): Promise<SwarmNode> {
  const shoal = await startShoal({ upstreams: { [REG]: origin.url }, env, logLevel: 'debug', args: seeds.flatMap((s) => ['--bootstrap', s.p2pAddr]) })
  const n = await asSwarmNode(shoal, index)
  nodes.push(n)
  return n
}

/** pulls `blob` through `through`; asserts the bytes, and returns the time taken and what came from origin */
async function pull(through: SwarmNode, blob: BlobSpec): Promise<{ ms: number; originBytes: number }> {
  const mark = origin.mark()
  const got = await hashGet(blobUrl(through, NAME, blob.digest, REG))
  assert.equal(got.status, 200)
  assert.equal(got.digest, blob.digest)
  await origin.flush()
  return { ms: got.totalMs, originBytes: origin.blobBytesSince(mark, blob.digest) }
}

describe('per-node rate caps', { timeout: 90_000 }, () => {
  test('a seeder capped at 4 MiB/s sends a peer a 16 MiB blob no faster than that', async () => {
    const seeder = await node(1, { SHOAL_P2P_UPLOAD_RATE: '4MiB' })
    await pull(seeder, viaCappedSeeder) // alone: from origin, then it seeds
    const puller = await node(2, {}, [seeder])
    await waitJoined([seeder, puller])
    await waitAnnounced(seeder, [viaCappedSeeder.digest])
    const { ms, originBytes } = await pull(puller, viaCappedSeeder)
    const sent = (await seeder.p2p()).bytesToPeers
    assert.equal(originBytes, 0, 'every byte came from the seeder')
    assert.ok(sent >= SIZE, `the seeder sent ${sent} bytes`)
    assert.ok(ms >= FLOOR_MS, `16 MiB in ${Math.round(ms)} ms: over the cap (at least ${Math.round(FLOOR_MS)} ms)`)
    console.log(`# capped seeder: 16 MiB in ${Math.round(ms)} ms (${((SIZE / MiB / ms) * 1000).toFixed(2)} MiB/s)`)
  })

  test('a node capped at 4 MiB/s receives a 16 MiB blob no faster than that, from an uncapped peer and fresh from origin', async () => {
    const seeder = await node(3, {})
    await pull(seeder, toCappedNode)
    const capped = await node(4, { SHOAL_P2P_DOWNLOAD_RATE: '4MiB' }, [seeder])
    await waitJoined([seeder, capped])
    await waitAnnounced(seeder, [toCappedNode.digest])
    const fromPeer = await pull(capped, toCappedNode)
    assert.equal(fromPeer.originBytes, 0, 'every byte came from the peer')
    assert.ok(fromPeer.ms >= FLOOR_MS, `from the peer in ${Math.round(fromPeer.ms)} ms: over the cap (at least ${Math.round(FLOOR_MS)} ms)`)
    // a blob no node holds yet: the two fetch it from origin once (each its share), under the same cap
    const fresh = await pull(capped, fresh16)
    assert.equal(fresh.originBytes, SIZE, 'origin sent the blob once')
    assert.ok(fresh.ms >= FLOOR_MS, `a fresh blob in ${Math.round(fresh.ms)} ms: over the cap (at least ${Math.round(FLOOR_MS)} ms)`)
    console.log(`# capped node: 16 MiB from a peer in ${Math.round(fromPeer.ms)} ms, a fresh blob in ${Math.round(fresh.ms)} ms`)
  })

  test('a node alone (swarm off) capped at 4 MiB/s receives a 16 MiB blob from origin no faster than that', async () => {
    const shoal = await startShoal({ upstreams: { [REG]: origin.url }, p2p: false, env: { SHOAL_P2P_DOWNLOAD_RATE: '4MiB' } })
    swarmless.push(shoal)
    const mark = origin.mark()
    const got = await hashGet(blobUrl(shoal, NAME, alone16.digest, REG))
    assert.equal(got.digest, alone16.digest)
    await origin.flush()
    assert.equal(origin.blobBytesSince(mark, alone16.digest), SIZE)
    assert.ok(got.totalMs >= FLOOR_MS, `from origin in ${Math.round(got.totalMs)} ms: over the cap (at least ${Math.round(FLOOR_MS)} ms)`)
    console.log(`# capped node alone: 16 MiB from origin in ${Math.round(got.totalMs)} ms`)
  })
})
