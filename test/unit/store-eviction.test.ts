/**
 * The store's quota: LRU eviction between the watermarks, pinned and in-use blobs kept, the
 * eviction hook, refusal when nothing fits, the disk-free check, and the manifest and tag caps.
 */
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { access, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, beforeEach, describe, test } from 'node:test'
import { pino } from 'pino'
import { parseDigest } from '../../src/oci/digest.js'
import { BlobStore } from '../../src/store/blob-store.js'
import type { StoreOptions } from '../../src/store/types.js'
import { putBlob } from '../helpers/store.js'

const log = pino({ level: 'silent' })
const BIG_DISK = async () => ({ total: 1e12, free: 1e12 })

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  )
}

async function until(what: string, fn: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

describe('store quota and eviction', () => {
  let dir: string
  let store: BlobStore | undefined
  const open = async (opts: StoreOptions): Promise<BlobStore> => {
    store = await BlobStore.open(dir, log, { statfs: BIG_DISK, ...opts })
    return store
  }
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-evict-'))
  })
  afterEach(async () => {
    await store?.close()
    store = undefined
    await rm(dir, { recursive: true, force: true })
  })

  test('above the high watermark, least recently used blobs go until below the low one', async () => {
    const s = await open({ maxBytes: 1000, highWatermark: 0.9, lowWatermark: 0.8 })
    const evicted: string[] = []
    s.onEvict((d) => evicted.push(d))
    const blobs: string[] = []
    for (let i = 0; i < 9; i++) blobs.push(await putBlob(s, randomBytes(100)))
    assert.equal(s.usage().bytes, 900)
    await sleep(20)
    assert.deepEqual(evicted, [], 'at the high watermark, not above it: nothing evicted')
    s.touch(blobs[0]!) // now the most recently used
    s.touch(blobs[1]!)
    blobs.push(await putBlob(s, randomBytes(100)))
    await until('eviction', () => evicted.length === 2)
    assert.deepEqual(evicted, [blobs[2], blobs[3]])
    assert.equal(s.usage().bytes, 800)
    for (const d of evicted) {
      assert.equal(s.stat(d), undefined)
      assert.equal(await exists(s.blobPath(d)), false, 'file removed with the index entry')
    }
    // the index agrees after a restart, and the LRU order survives it
    await s.close()
    const again = await open({ maxBytes: 1000 })
    assert.equal(again.usage().blobs, 8)
    assert.equal(again.stat(blobs[2]!), undefined)
    assert.equal(again.report?.droppedEntries, 0)
  })

  test('pinned and in-use blobs are never evicted', async () => {
    const s = await open({ maxBytes: 10_000 })
    const blobs: string[] = []
    for (let i = 0; i < 5; i++) blobs.push(await putBlob(s, randomBytes(100)))
    await s.pin({ ref: 'r.test/a:1', platform: undefined, manifests: [], blobs: [blobs[0]!], pinnedAt: Date.now() })
    const reading = s.createReadStream(blobs[1]!, 0, 99)
    reading.pause()
    const r1 = await s.evict(Number.POSITIVE_INFINITY)
    assert.equal(r1.evicted, 3)
    assert.ok(s.stat(blobs[0]!), 'pinned blob kept')
    assert.ok(s.stat(blobs[1]!), 'blob being read kept')
    reading.destroy()
    await until('reader closed', () => !s.isInUse(blobs[1]!))
    await s.evict(Number.POSITIVE_INFINITY)
    assert.equal(s.stat(blobs[1]!), undefined, 'evictable once the reader is gone')
    assert.ok(s.stat(blobs[0]!))
    await s.unpin('r.test/a:1')
    await s.evict(Number.POSITIVE_INFINITY)
    assert.equal(s.usage().blobs, 0)
  })

  test('a blob being written is in use until its writer closes', async () => {
    const s = await open({ maxBytes: 10_000 })
    const bytes = randomBytes(300)
    const digest = parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`)
    const w = await s.createWriter(digest, bytes.length)
    await w.write(bytes)
    assert.equal((await s.evict(Number.POSITIVE_INFINITY)).evicted, 0, 'an active partial is not evicted')
    await w.commit()
    assert.equal((await s.evict(Number.POSITIVE_INFINITY)).evicted, 0, 'committed but still open for readers')
    await w.close()
    assert.equal((await s.evict(Number.POSITIVE_INFINITY)).evicted, 1)
  })

  test('a blob that cannot fit is refused with StoreFullError; room is made when it can', async () => {
    const s = await open({ maxBytes: 1000 })
    const big = parseDigest(`sha256:${'a'.repeat(64)}`)
    await assert.rejects(s.createWriter(big, 1001), { name: 'StoreFullError' })
    const kept = await putBlob(s, randomBytes(400))
    await s.pin({ ref: 'r.test/a:1', platform: undefined, manifests: [], blobs: [kept], pinnedAt: Date.now() })
    const old = await putBlob(s, randomBytes(400))
    // 800 held; 700 more needs eviction: the unpinned one goes, the pinned one stays
    await putBlob(s, randomBytes(500))
    assert.equal(s.stat(old), undefined)
    assert.ok(s.stat(kept))
    // now 900 held, 400 pinned + 500 in the way… pin that one too: nothing can go
    const [last] = [...s.list()].filter((b) => b.digest !== kept)
    await s.pin({ ref: 'r.test/a:2', platform: undefined, manifests: [], blobs: [last!.digest], pinnedAt: Date.now() })
    await assert.rejects(s.createWriter(parseDigest(`sha256:${'b'.repeat(64)}`), 200), { name: 'StoreFullError' })
    assert.equal(s.usage().partials, 0, 'a refused blob reserves nothing')
  })

  test('a full disk (statfs) makes room by evicting, else refuses', async () => {
    let free = 100_000_000
    const s = await open({ statfs: async () => ({ total: 1e9, free }), maxPercent: 0 })
    const a = await putBlob(s, randomBytes(1000))
    free = 1_000 // less than the 1% margin of the file system: the disk is full
    await assert.rejects(s.createWriter(parseDigest(`sha256:${'c'.repeat(64)}`), 100), { name: 'StoreFullError' })
    assert.equal(s.stat(a), undefined, 'it evicted what it could first')
  })

  test('maxPercent sets the quota from the file system size', async () => {
    const s = await open({ statfs: async () => ({ total: 1_000_000, free: 1_000_000 }), maxPercent: 50, maxBytes: 0 })
    assert.equal(s.usage().quotaBytes, 500_000)
    assert.equal(s.usage().highWatermarkBytes, 450_000)
    assert.equal(s.usage().lowWatermarkBytes, 400_000)
    await s.close()
    const both = await open({ statfs: async () => ({ total: 1_000_000, free: 1_000_000 }), maxPercent: 50, maxBytes: 300_000 })
    assert.equal(both.usage().quotaBytes, 300_000, 'the smaller cap wins')
  })

  test('manifests and tags are capped apart from blobs, least recently used first', async () => {
    const s = await open({ manifestMaxBytes: 300, maxTags: 2 })
    const m = (i: number) => {
      const bytes = Buffer.from(`{"n":${i},"pad":"${'x'.repeat(80)}"}`)
      return { digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`, mediaType: 'application/json', bytes }
    }
    const ms = [m(0), m(1), m(2), m(3)]
    for (const rec of ms.slice(0, 3)) await s.putManifest(rec)
    assert.ok(await s.getManifest(ms[0]!.digest)) // 0 is now the most recent
    await s.putManifest(ms[3]!)
    assert.equal(await s.getManifest(ms[1]!.digest), undefined, 'least recently used manifest dropped')
    assert.ok(await s.getManifest(ms[0]!.digest))
    assert.ok(await s.getManifest(ms[3]!.digest))
    assert.ok(s.usage().manifestBytes <= 300)
    for (const k of ['a', 'b', 'c']) await s.putTag(k, { digest: ms[0]!.digest, mediaType: 'x', size: 1, checkedAt: Date.now() })
    assert.equal(await s.getTag('a'), undefined)
    assert.ok(await s.getTag('c'))
    assert.equal(s.usage().tags, 2)
  })
})
