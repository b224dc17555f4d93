/**
 * What a crash can leave behind, repaired at start-up: index entries without files, orphan and
 * truncated files, stray temp files; partial downloads kept and resumed from where they stopped
 * (re-hashing the local bytes, fetching only the rest); the data-dir lock.
 */
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, rm, truncate, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { Readable } from 'node:stream'
import { afterEach, beforeEach, describe, test } from 'node:test'
import { pino } from 'pino'
import { loadConfig, parseBytes } from '../../src/config/load.js'
import { parseDigest } from '../../src/oci/digest.js'
import { BlobStore } from '../../src/store/blob-store.js'
import { BlobService } from '../../src/transfer/blob-service.js'
import type { BlobLocator, BlobSource, SourceBody } from '../../src/transfer/types.js'
import { putBlob } from '../helpers/store.js'

const log = pino({ level: 'silent' })
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`

/** Serves fixed bytes from any offset, counting what it sent. */
class CountingSource implements BlobSource {
  readonly kind = 'origin'
  served = 0
  offsets: number[] = []
  constructor(private readonly bytes: Buffer) {}
  async open(_l: BlobLocator, options: { signal: AbortSignal; offset?: number }): Promise<SourceBody> {
    const offset = options.offset ?? 0
    this.offsets.push(offset)
    const part = this.bytes.subarray(offset)
    this.served += part.length
    return { size: this.bytes.length, offset, body: Readable.from([Buffer.from(part)]) }
  }
  async stat(): Promise<number> {
    return this.bytes.length
  }
}

async function drain(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of stream) parts.push(c as Buffer)
  return Buffer.concat(parts)
}

describe('store recovery', () => {
  let dir: string
  const stores: BlobStore[] = []
  const open = async (): Promise<BlobStore> => {
    const s = await BlobStore.open(dir, log)
    stores.push(s)
    return s
  }
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-recover-'))
  })
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('start-up reconciles the index with the files', async () => {
    let s = await open()
    const keep = await putBlob(s, randomBytes(1000))
    const gone = await putBlob(s, randomBytes(1000))
    const cut = await putBlob(s, randomBytes(1000))
    await s.close()
    // a file without its index entry (crash after rename), a corrupt one, a missing one, a
    // truncated one, and stray temp files
    const orphanBytes = randomBytes(500)
    const orphan = sha(orphanBytes)
    const path = (d: string) => join(dir, 'blobs', 'sha256', d.slice(7, 9), d.slice(7))
    await mkdir(dirname(path(orphan)), { recursive: true })
    await writeFile(path(orphan), orphanBytes)
    const bad = sha(Buffer.from('something else'))
    await mkdir(dirname(path(bad)), { recursive: true })
    await writeFile(path(bad), Buffer.from('not what the name says'))
    await unlink(path(gone))
    await truncate(path(cut), 10)
    await writeFile(join(dir, 'tmp', 'sha256-deadbeef.partial'), 'junk')
    await writeFile(join(dir, 'tmp', 'leftover.tmp'), 'junk')

    s = await open()
    assert.ok(s.stat(keep))
    assert.equal(s.stat(gone), undefined)
    assert.equal(s.stat(cut), undefined)
    assert.equal(s.stat(orphan)?.size, 500, 'a verified orphan is re-indexed')
    assert.equal(s.stat(bad), undefined)
    assert.deepEqual(await readdir(join(dir, 'tmp')), [])
    const files = (await readdir(join(dir, 'blobs'), { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => `sha256:${e.name}`)
    assert.deepEqual(files.sort(), [keep, orphan].sort())
    assert.equal(s.report?.droppedEntries, 2)
    assert.equal(s.report?.reindexedOrphans, 1)
    assert.equal(s.report?.removedOrphans, 1)
    assert.equal(s.usage().bytes, 1500)
  })

  test('a partial download survives a restart and resumes without fetching its first part again', async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 17)
    const digest = parseDigest(sha(bytes))
    let s = await open()
    const w = await s.createWriter(digest, bytes.length)
    const half = Math.floor(bytes.length / 2)
    await w.write(bytes.subarray(0, half))
    // no abandon(), no close(): the process dies here
    await s.close()
    s = await open()
    assert.equal(s.usage().partials, 1)
    assert.equal(s.listPartials()[0]?.written, half)

    const source = new CountingSource(bytes)
    const controller = new AbortController()
    const svc = new BlobService({ store: s, source, logger: log, resumeAttempts: 1, signal: controller.signal })
    const handle = await svc.open({ registry: 'r.test', name: 'a/b', digest }, AbortSignal.timeout(5000))
    const got = await drain(handle.read(0, bytes.length - 1))
    await svc.settled()
    assert.equal(sha(got), digest.value)
    assert.deepEqual(source.offsets, [half], 'one request, from where it stopped')
    assert.equal(source.served, bytes.length - half)
    assert.equal(s.stat(digest.value)?.size, bytes.length)
    assert.equal(s.usage().partials, 0)
    assert.deepEqual(await readdir(join(dir, 'tmp')), [])
  })

  test('a corrupt partial fails verification and is discarded; the next pull succeeds', async () => {
    const bytes = randomBytes(200_000)
    const digest = parseDigest(sha(bytes))
    let s = await open()
    const w = await s.createWriter(digest, bytes.length)
    const wrong = Buffer.from(bytes.subarray(0, 1000))
    wrong[5] = (wrong[5] as number) ^ 1
    await w.write(wrong)
    await s.close()
    s = await open()
    const source = new CountingSource(bytes)
    const svc = new BlobService({ store: s, source, logger: log, resumeAttempts: 1, signal: new AbortController().signal })
    const locator = { registry: 'r.test', name: 'a/b', digest }
    const first = await svc.open(locator, AbortSignal.timeout(5000))
    await assert.rejects(drain(first.read(0, bytes.length - 1)), { name: 'DigestMismatchError' })
    await svc.settled()
    assert.equal(s.usage().partials, 0)
    const second = await svc.open(locator, AbortSignal.timeout(5000))
    assert.equal(sha(await drain(second.read(0, bytes.length - 1))), digest.value)
    await svc.settled()
  })

  test('a download cut by shutdown keeps its partial file', async () => {
    const bytes = randomBytes(100_000)
    const digest = parseDigest(sha(bytes))
    const s = await open()
    const controller = new AbortController()
    const source: BlobSource = {
      kind: 'origin',
      stat: async () => bytes.length,
      open: async (_l, { signal }) => {
        async function* gen() {
          yield bytes.subarray(0, 40_000)
          await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
        }
        return { size: bytes.length, offset: 0, body: Readable.from(gen()) }
      },
    }
    const svc = new BlobService({ store: s, source, logger: log, resumeAttempts: 1, signal: controller.signal })
    await svc.open({ registry: 'r.test', name: 'a/b', digest }, AbortSignal.timeout(5000))
    while ((s.listPartials()[0]?.written ?? 0) < 40_000) await new Promise((r) => setTimeout(r, 5))
    controller.abort(new Error('shutting down'))
    await svc.settled()
    assert.equal(s.listPartials()[0]?.written, 40_000)
    assert.deepEqual(await readdir(join(dir, 'tmp')), [`sha256-${digest.hex}.partial`])
  })

  test('a second store on the same data dir is refused with StoreLockedError', async () => {
    await open()
    await assert.rejects(BlobStore.open(dir, log), { name: 'StoreLockedError', message: /in use by another shoal process/ })
  })

  test('parseBytes reads sizes with units', () => {
    assert.equal(parseBytes('500MB'), 500_000_000)
    assert.equal(parseBytes('20GiB'), 20 * 2 ** 30)
    assert.equal(parseBytes('1.5k'), 1500)
    assert.equal(parseBytes(42), 42)
    assert.equal(parseBytes('0'), 0)
    assert.equal(parseBytes('12 parsecs'), undefined)
    assert.equal(parseBytes(-1), undefined)
  })

  test('store config: defaults, environment and flags', () => {
    const d = loadConfig({ env: {} }).store
    assert.deepEqual(d, { maxBytes: 0, maxPercent: 80, highWatermark: 0.9, lowWatermark: 0.8, manifestMaxBytes: 256 * 2 ** 20, maxTags: 100_000 })
    const c = loadConfig({ env: { SHOAL_STORE_MAX_BYTES: '2GiB', SHOAL_STORE_LOW_WATERMARK: '50' }, flags: { 'store.maxPercent': '30' } }).store
    assert.equal(c.maxBytes, 2 * 2 ** 30)
    assert.equal(c.maxPercent, 30)
    assert.equal(c.lowWatermark, 0.5)
    assert.throws(() => loadConfig({ env: { SHOAL_STORE_MAX_BYTES: 'lots' } }), /store\.maxBytes/)
    assert.throws(() => loadConfig({ env: { SHOAL_STORE_LOW_WATERMARK: '95' } }), /store\.lowWatermark/)
  })
})
