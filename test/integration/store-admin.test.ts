/**
 * The store through the CLI and the admin API of a running daemon: prefetch (with progress),
 * pin / unpin (every platform or one), gc, verify, store ls (human and --json), pinned blobs
 * surviving eviction under a quota, and a second daemon on the same data dir refused clearly.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { type PushedImage, type PushedIndex, pushImage, pushIndex } from '../helpers/images.js'
import { freePort, run } from '../helpers/proc.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { SHOAL_MAIN, type Shoal, startShoal } from '../helpers/shoal.js'

const QUOTA = 6 * 1024 * 1024

describe('store admin', () => {
  let origin: OriginRegistry
  let shoal: Shoal
  let dataDir: string
  let multi: PushedIndex
  let other: PushedImage
  let third: PushedImage

  const cli = (...args: string[]) => run(process.execPath, [SHOAL_MAIN, ...args, '--address', shoal.url], { timeoutMs: 30_000 })
  const ls = async () => JSON.parse((await cli('store', 'ls', '--json')).stdout) as { blobs: { digest: string; pinned: boolean }[]; usage: { bytes: number } }

  before(async () => {
    origin = await startOriginRegistry()
    multi = await pushIndex(origin.url, 'demo/multi', 'v1', {
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64' },
      ],
      layers: 2,
      layerSize: 1_000_000,
    })
    other = await pushImage(origin.url, 'demo/other', 'v1', { layers: 2, layerSize: 1_000_000, format: 'oci' })
    third = await pushImage(origin.url, 'demo/third', 'v1', { layers: 2, layerSize: 1_000_000, format: 'docker' })
    dataDir = await mkdtemp(join(tmpdir(), 'shoal-admin-'))
    shoal = await startShoal({ dataDir, upstreams: { 'origin.test': origin.url }, args: ['--store-max-bytes', String(QUOTA)] })
  })
  after(async () => {
    await shoal?.close()
    await origin?.close()
    await rm(dataDir, { recursive: true, force: true })
  })

  test('prefetch pulls every blob of an image into the store and prints progress', async () => {
    const r = await cli('prefetch', 'origin.test/demo/multi:v1', '--platform', 'linux/arm64')
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /origin\.test\/demo\/multi:v1 \(sha256:[a-f0-9]{64}\): 2 manifests, 3 blobs/)
    assert.match(r.stdout, /\[3\/3\] sha256:[a-f0-9]{12}\s+\S+ \S+\s+fetched from origin/)
    assert.match(r.stdout, /done: 3\/3 blobs held/)
    const arm = multi.images[1]!
    const held = new Set((await ls()).blobs.map((b) => b.digest))
    for (const d of [arm.config.digest, ...arm.layers.map((l) => l.digest)]) assert.ok(held.has(d), `${d} held`)
    const again = await cli('prefetch', 'origin.test/demo/multi:v1', '--platform', 'linux/arm64')
    assert.match(again.stdout, /already held/)
  })

  test('pinned blobs survive eviction; unpinned ones go least recently used first', async () => {
    const pin = await cli('pin', 'origin.test/demo/multi:v1', '--platform', 'linux/arm64')
    assert.equal(pin.code, 0, pin.stderr)
    assert.match(pin.stdout, /pinned origin\.test\/demo\/multi:v1 \(linux\/arm64\): 2 manifests, 3 blobs \(3 held now/)
    // two more images: more than the 6 MiB quota holds
    for (const ref of ['origin.test/demo/other:v1', 'origin.test/demo/third:v1']) {
      const r = await cli('prefetch', ref)
      assert.equal(r.code, 0, r.stderr)
    }
    const list = await ls()
    const held = new Set(list.blobs.map((b) => b.digest))
    const arm = multi.images[1]!
    for (const d of [arm.config.digest, ...arm.layers.map((l) => l.digest)]) {
      assert.ok(held.has(d), 'pinned blob kept')
      assert.ok(list.blobs.find((b) => b.digest === d)?.pinned)
    }
    assert.ok(!held.has(other.layers[0]!.digest), 'the least recently used unpinned layer was evicted')
    assert.ok(held.has(third.layers[1]!.digest), 'the most recent layer is held')
    assert.ok(list.usage.bytes <= QUOTA)

    const human = await cli('store', 'ls')
    assert.match(human.stdout, /^DIGEST\s+SIZE\s+LAST ACCESS\s+PINNED$/m)
    assert.match(human.stdout, new RegExp(`${arm.layers[0]!.digest}\\s+\\S+ \\S+\\s+\\d+s ago\\s+yes`))
    assert.match(human.stdout, /\d+ blobs, .* \(3 pinned\), 0 partial .*quota/)
  })

  test('unpin lets them go; gc evicts now; verify re-hashes', async () => {
    const un = await cli('unpin', 'origin.test/demo/multi:v1')
    assert.equal(un.code, 0, un.stderr)
    assert.match(un.stdout, /unpinned origin\.test\/demo\/multi:v1 \(linux\/arm64\)/)
    const notPinned = await cli('unpin', 'origin.test/demo/multi:v1')
    assert.equal(notPinned.code, 1)
    assert.match(notPinned.stderr, /is not pinned/)
    assert.ok((await ls()).blobs.every((b) => !b.pinned))
    const gc = await cli('gc', '--json')
    assert.equal(gc.code, 0, gc.stderr)
    const g = JSON.parse(gc.stdout) as { usage: { bytes: number; lowWatermarkBytes: number } }
    assert.ok(g.usage.bytes <= g.usage.lowWatermarkBytes)
    const verify = await cli('verify')
    assert.equal(verify.code, 0, verify.stderr)
    assert.match(verify.stdout, /verified \d+ blobs .*: 0 bad/)
  })

  test('bad input and an unreachable daemon are clear errors', async () => {
    const bad = await cli('pin', 'nope.example/x:1')
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /not mirrored by this node/)
    const port = await freePort()
    const down = await run(process.execPath, [SHOAL_MAIN, 'gc', '--address', `http://127.0.0.1:${port}`])
    assert.equal(down.code, 1)
    assert.match(down.stderr, /cannot reach the shoal daemon at http:\/\/127\.0\.0\.1:\d+ .*is it running/)
  })

  test('a second daemon on the same data dir refuses to start with a clear error', async () => {
    const port = await freePort()
    const r = await run(process.execPath, [SHOAL_MAIN, 'daemon', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--upstream', `origin.test=${origin.url}`], {
      timeoutMs: 15_000,
    })
    assert.equal(r.code, 1)
    assert.match(r.stderr, /^shoal: cannot start: data dir .* is in use by another shoal process/m)
    assert.ok((await fetch(`${shoal.url}/healthz`)).ok, 'the first daemon is unaffected')
  })
})
