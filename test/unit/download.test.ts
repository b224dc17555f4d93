import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, before, describe, test } from 'node:test'
import { pino } from 'pino'
import { parseDigest } from '../../src/oci/digest.js'
import { BlobStore } from '../../src/store/blob-store.js'
import { type BlobHandle, BlobService } from '../../src/transfer/blob-service.js'
import type { BlobLocator, BlobSource, SourceBody } from '../../src/transfer/types.js'

const log = pino({ level: 'silent' })

/** A source serving fixed bytes in small chunks with a delay, optionally corrupting or cutting. */
class FakeSource implements BlobSource {
  readonly kind = 'origin'
  opens = 0
  served = 0
  constructor(
    private readonly bytes: Buffer,
    private readonly opts: { chunk?: number; delayMs?: number; corruptAt?: number; cutAt?: number; cutTimes?: number } = {},
  ) {}

  async open(_l: BlobLocator, options: { signal: AbortSignal; offset?: number }): Promise<SourceBody> {
    this.opens++
    const offset = options.offset ?? 0
    const self = this
    const chunk = this.opts.chunk ?? 64 * 1024
    async function* gen(): AsyncGenerator<Buffer> {
      for (let pos = offset; pos < self.bytes.length; pos += chunk) {
        if (self.opts.delayMs) await sleep(self.opts.delayMs)
        if (self.opts.cutAt !== undefined && pos >= self.opts.cutAt && (self.opts.cutTimes ?? 0) > 0) {
          self.opts.cutTimes = (self.opts.cutTimes ?? 0) - 1
          throw Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' })
        }
        let piece = Buffer.from(self.bytes.subarray(pos, pos + chunk))
        if (self.opts.corruptAt !== undefined && self.opts.corruptAt >= pos && self.opts.corruptAt < pos + chunk) {
          piece = Buffer.from(piece)
          piece[self.opts.corruptAt - pos] = (piece[self.opts.corruptAt - pos] as number) ^ 0xff
        }
        self.served += piece.length
        yield piece
      }
    }
    return { size: this.bytes.length, offset, body: Readable.from(gen()) }
  }

  async stat(): Promise<number | undefined> {
    return this.bytes.length
  }
}

async function drain(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of stream) parts.push(c as Buffer)
  return Buffer.concat(parts)
}

function locatorFor(bytes: Buffer): BlobLocator {
  return { registry: 'r.test', name: 'a/b', digest: parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`) }
}

describe('single-flight downloads', () => {
  let dir: string
  let store: BlobStore
  const services: BlobService[] = []
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-dl-'))
    store = await BlobStore.open(dir, log)
  })
  after(async () => {
    for (const svc of services) await svc.settled()
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })

  function service(source: BlobSource): BlobService {
    const svc = new BlobService({ store, source, logger: log, resumeAttempts: 2, signal: new AbortController().signal })
    services.push(svc)
    return svc
  }

  test('concurrent readers share one fetch and all get the right bytes; the blob lands in the store', async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 17)
    const source = new FakeSource(bytes, { delayMs: 1 })
    const svc = service(source)
    const loc = locatorFor(bytes)
    const bodies = await Promise.all(
      Array.from({ length: 10 }, async () => {
        const h = await svc.open(loc, AbortSignal.timeout(10_000))
        assert.equal(h.source, 'origin')
        return drain(h.read(0, h.size - 1))
      }),
    )
    assert.equal(source.opens, 1)
    assert.equal(source.served, bytes.length)
    for (const b of bodies) assert.ok(b.equals(bytes))
    assert.equal(store.stat(loc.digest.value)?.size, bytes.length)
    const again = await svc.open(loc, AbortSignal.timeout(1000))
    assert.equal(again.source, 'cache')
    assert.ok((await drain(again.read(100, 199))).equals(bytes.subarray(100, 200)))
  })

  test('the first bytes reach a reader before the blob is complete', async () => {
    const bytes = randomBytes(2 * 1024 * 1024)
    const source = new FakeSource(bytes, { delayMs: 5, chunk: 32 * 1024 })
    const svc = service(source)
    const h = await svc.open(locatorFor(bytes), AbortSignal.timeout(10_000))
    const reader = h.read(0, h.size - 1)
    const first = (await reader[Symbol.asyncIterator]().next()).value as Buffer
    assert.ok(first.length > 0)
    assert.ok(source.served < bytes.length, 'first chunk arrived before the source finished')
    reader.destroy()
  })

  test('a reader reuses its buffers only once its destination has let go of their bytes', async () => {
    const bytes = randomBytes(6 * 1024 * 1024 + 5)
    const svc = service(new FakeSource(bytes, { chunk: 256 * 1024 }))
    const h = await svc.open(locatorFor(bytes), AbortSignal.timeout(10_000))
    // a slow destination that keeps references to what it was given and reads them later (a
    // socket flushing to the kernel): a buffer reused too early would change bytes it still holds
    const slowCopy = async (handle: BlobHandle): Promise<void> => {
      const held: Buffer[] = []
      const out: Buffer[] = []
      const buffers = new Set<ArrayBufferLike>()
      const dest = new Writable({
        highWaterMark: 16 * 1024,
        write(chunk: Buffer, _enc, done) {
          held.push(chunk)
          buffers.add(chunk.buffer)
          setTimeout(() => {
            out.push(Buffer.from(held.shift() as Buffer))
            done()
          }, 5)
        },
      })
      await pipeline(handle.read(0, handle.size - 1, () => dest.writableLength), dest)
      assert.ok(Buffer.concat(out).equals(bytes), `${handle.source}: every byte as the blob has it`)
      assert.ok(buffers.size < out.length, `${handle.source}: read buffers reused (${buffers.size} distinct for ${out.length} writes)`)
    }
    await slowCopy(h)
    const cached = await svc.open(locatorFor(bytes), AbortSignal.timeout(10_000))
    assert.equal(cached.source, 'cache')
    await slowCopy(cached)
  })

  test('a range of a blob still downloading', async () => {
    const bytes = randomBytes(1024 * 1024)
    const svc = service(new FakeSource(bytes, { delayMs: 1 }))
    const h = await svc.open(locatorFor(bytes), AbortSignal.timeout(10_000))
    assert.ok((await drain(h.read(500_000, 500_999))).equals(bytes.subarray(500_000, 501_000)))
  })

  test('corrupt bytes: readers fail before the last byte, nothing is stored, no temp file stays', async () => {
    const bytes = randomBytes(1024 * 1024)
    const source = new FakeSource(bytes, { corruptAt: 1000 })
    const svc = service(source)
    const loc = locatorFor(bytes)
    const h = await svc.open(loc, AbortSignal.timeout(10_000))
    let received = 0
    const reader = h.read(0, h.size - 1)
    await assert.rejects(async () => {
      for await (const c of reader) received += (c as Buffer).length
    }, /hashes to/)
    assert.ok(received < bytes.length, `got ${received} of ${bytes.length}: never the whole body`)
    assert.equal(store.stat(loc.digest.value), undefined)
    await svc.settled()
    assert.deepEqual(
      (await readdir(join(dir, 'tmp'))).filter((f) => f.startsWith(loc.digest.hex)),
      [],
    )
    // the next request starts afresh
    const retry = new FakeSource(bytes)
    const svc2 = service(retry)
    const h2 = await svc2.open(loc, AbortSignal.timeout(10_000))
    assert.ok((await drain(h2.read(0, h2.size - 1))).equals(bytes))
  })

  test('a body cut mid-way resumes from where it stopped', async () => {
    const bytes = randomBytes(1024 * 1024)
    const source = new FakeSource(bytes, { cutAt: 512 * 1024, cutTimes: 1 })
    const svc = service(source)
    const h = await svc.open(locatorFor(bytes), AbortSignal.timeout(10_000))
    assert.ok((await drain(h.read(0, h.size - 1))).equals(bytes))
    assert.equal(source.opens, 2)
    assert.equal(source.served, bytes.length, 'no byte fetched twice')
  })

  test('one waiter giving up does not cancel the download for the others', async () => {
    const bytes = randomBytes(512 * 1024)
    const svc = service(new FakeSource(bytes, { delayMs: 2, chunk: 16 * 1024 }))
    const loc = locatorFor(bytes)
    const quitter = new AbortController()
    const first = svc.open(loc, quitter.signal)
    quitter.abort()
    await assert.rejects(first)
    const h = await svc.open(loc, AbortSignal.timeout(10_000))
    assert.ok((await drain(h.read(0, h.size - 1))).equals(bytes))
  })
})
