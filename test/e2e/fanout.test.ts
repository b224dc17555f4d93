/**
 * End-to-end (slow, root): a small fleet fans out a new image through Shoal.
 *
 * Six node namespaces and an origin namespace on one bridge, every link capped both ways; the
 * origin is docker-registry with two generated images; Shoal runs in every node namespace, all
 * bootstrapped to the first node; half the nodes pull with containerd's ctr through a hosts.toml
 * mirror entry (fetch and unpack), the others with the light verifying puller.
 *
 * 1. All pull at once: the origin's link sends at most 1.25× the image (its kernel tx counter),
 *    and every pulled blob hashes to its digest.
 * 2. All pull the first image again (the fleet holds it): origin sends no blob byte.
 * 3. A rolling update: the nodes start on a third image one after another over 2.5 s, later ones
 *    while the first are still fetching: origin sends at most 1.25× the image again, and no
 *    runtime fell back to origin on its own.
 * 4. All pull another image at once; the node fetching most from origin (its
 *    shoal_transfer_fetched_bytes_total{source="origin"}) is killed mid-transfer: every other
 *    node still completes with correct bytes.
 *
 * Namespaces, bridge and tc rules are removed in after(), whatever happened. Skipped only when
 * not root or without iproute2.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, before, describe, type TestContext, test } from 'node:test'
import { FanoutFleet, type FleetNode, type RoundResult } from '../../scripts/bench/lib/fleet-fanout.js'
import { nodeTable } from '../../scripts/bench/lib/fleet-report.js'
import { SHOAL_MAIN } from '../helpers/shoal.js'

const NODES = 6
const RATE_MBIT = 50
const IMAGE_BYTES = 24 * 1024 * 1024
const LAYERS = 3
const ORIGIN_LIMIT = 1.25
const ROUND_TIMEOUT_MS = 60_000
/** the rolling update: node i starts i × this after the first (the transfer takes about 4 s at origin's rate) */
const STAGGER_MS = 500
/** a fetcher counts as under way once this much of a layer came from origin (Shoal counts whole chunks) */
const MID_TRANSFER_BYTES = 1024 * 1024

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root: it builds network namespaces and tc rules'
  const ip = spawnSync('ip', ['-V'], { stdio: 'ignore' })
  if (ip.error !== undefined || ip.status !== 0) return 'needs iproute2 (`ip`)'
  return false
}

function describeRound(r: RoundResult): string {
  return `origin sent ${r.originTxBytes} bytes = ${(r.originTxBytes / r.image.bytes).toFixed(3)}× the image (${r.image.bytes} bytes)\n${nodeTable(r)}`
}

/** every node pulled the whole image, and every blob hashed to its digest */
function assertAllPulled(r: RoundResult, imageBytes: number): void {
  for (const n of r.nodes) {
    assert.ok(n.ok, `${n.name} (${n.client}) failed: ${n.error}\n${describeRound(r)}`)
    assert.ok(n.verified, `${n.name} (${n.client}): ${n.error}\n${describeRound(r)}`)
    assert.equal(n.bytes, imageBytes, `${n.name} holds every byte of the image`)
  }
}

/** origin's link sent at most ORIGIN_LIMIT times the image */
function assertOriginSentAboutOnce(r: RoundResult, imageBytes: number): void {
  assert.ok(
    r.originTxBytes <= ORIGIN_LIMIT * imageBytes,
    `origin sent ${(r.originTxBytes / imageBytes).toFixed(3)}× the image, more than ${ORIGIN_LIMIT}×\n${describeRound(r)}`,
  )
}

const skip = skipReason()

describe('e2e: fleet fan-out in network namespaces', { skip }, () => {
  let work: string
  let ff: FanoutFleet | undefined

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-e2e-fanout-'))
    ff = await FanoutFleet.create({
      nodes: NODES,
      rateMbit: RATE_MBIT,
      images: [
        { name: 'fanout/first', tag: 'v1', layers: LAYERS, bytes: IMAGE_BYTES },
        { name: 'fanout/second', tag: 'v1', layers: LAYERS, bytes: IMAGE_BYTES },
        { name: 'fanout/third', tag: 'v1', layers: LAYERS, bytes: IMAGE_BYTES },
      ],
      work,
      clients: ['light', 'ctr'],
      shoalMain: SHOAL_MAIN,
      prefix: 'sbt',
      ctrUnpack: true,
    })
    await ff.startShoal()
  })

  after(async () => {
    await ff?.teardown()
    if (work !== undefined) await rm(work, { recursive: true, force: true })
  })

  /** every node pulls the fleet's `which`th image (node i starting offsetsMs[i] after the first; default all at once), the round printed: every node holds it whole and verified */
  async function pulledRound(t: TestContext, which: number, offsetsMs?: number[]): Promise<{ r: RoundResult; imageBytes: number }> {
    const image = ff!.origin.images[which]!
    const r = await ff!.round({ mode: 'shoal', image, timeoutMs: ROUND_TIMEOUT_MS, offsetsMs })
    t.diagnostic(describeRound(r))
    assertAllPulled(r, image.bytes)
    return { r, imageBytes: image.bytes }
  }

  test('six nodes pull at once: origin sends about one copy, every blob verified', { timeout: 120_000 }, async (t) => {
    const { r, imageBytes } = await pulledRound(t, 0)
    assertOriginSentAboutOnce(r, imageBytes)
  })

  test('all pull the first image again: origin sends manifests only', { timeout: 120_000 }, async (t) => {
    const { r } = await pulledRound(t, 0)
    const fromOrigin = r.nodes.reduce((a, n) => a + n.originBlobBytes, 0)
    assert.equal(fromOrigin, 0, `origin sent ${fromOrigin} blob bytes for an image the fleet holds\n${describeRound(r)}`)
  })

  test('a rolling update (starts spread over 2.5 s): origin sends about one copy, no runtime falls back to it', { timeout: 120_000 }, async (t) => {
    const { r, imageBytes } = await pulledRound(t, 2, ff!.nodes.map((_, i) => i * STAGGER_MS))
    const direct = r.nodes.filter((n) => n.directBlobBytes > 0).map((n) => `${n.name} ${n.directBlobBytes}`)
    assert.deepEqual(direct, [], `runtimes fetched blob bytes from origin themselves\n${describeRound(r)}`)
    assertOriginSentAboutOnce(r, imageBytes)
  })

  test('the origin fetcher is killed mid-transfer: every other node completes with correct bytes', { timeout: 120_000 }, async (t) => {
    const fleet = ff!
    const image = fleet.origin.images[1]!
    // the node that fetches most from origin during this round, once it has some of the image
    // from origin but the fleet does not have all of it yet
    let victim: { node: FleetNode; originBytes: number } | undefined
    const r = await fleet.round({
      mode: 'shoal',
      image,
      timeoutMs: ROUND_TIMEOUT_MS,
      during: async ({ before, done }) => {
        const deadline = Date.now() + ROUND_TIMEOUT_MS
        while (victim === undefined && !done() && Date.now() < deadline) {
          const counts = await Promise.all(
            fleet.nodes.map(async (node) => ({ node, originBytes: ((await fleet.counters(node))?.originBytes ?? 0) - (before.get(node.name)?.originBytes ?? 0) })),
          )
          const top = counts.reduce((a, b) => (b.originBytes > a.originBytes ? b : a))
          const total = counts.reduce((a, b) => a + b.originBytes, 0)
          if (top.originBytes >= MID_TRANSFER_BYTES && total < image.bytes) {
            victim = top
            fleet.killShoal(top.node)
            t.diagnostic(`killed ${top.node.name} (${top.node.client}) after it fetched ${top.originBytes} bytes from origin (fleet: ${total} of ${image.bytes})`)
          } else {
            await sleep(100)
          }
        }
      },
    })
    assert.ok(victim !== undefined, `found a node fetching from origin while the transfer was under way\n${describeRound(r)}`)
    t.diagnostic(describeRound(r))
    const survivors = r.nodes.filter((n) => n.killed !== true)
    assert.equal(survivors.length, NODES - 1)
    for (const n of survivors) {
      assert.ok(n.ok, `${n.name} (${n.client}) failed after ${victim!.node.name} was killed: ${n.error}\n${describeRound(r)}`)
      assert.ok(n.verified, `${n.name} (${n.client}): ${n.error}\n${describeRound(r)}`)
      assert.equal(n.bytes, image.bytes, `${n.name} holds every byte of the image`)
    }
  })
})
