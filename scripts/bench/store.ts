/**
 * The store's own costs, in one run:
 *  - start-up (open + reconcile of index and files, no re-hash) with 1,000 and 10,000 blobs;
 *  - eviction throughput (blobs and bytes freed per second, files and index together);
 *  - index operations per second: in-memory lookups and touches, LevelDB tag and manifest
 *    writes and reads, and small-blob commits (write, verify, fsync, rename, index);
 *  - a verified chunk read back for a peer or a reader: from a partial blob's file (the page
 *    cache) against a copy from a chunk still in memory (HotChunks), CPU per MiB.
 *
 *   scripts/bench/store [--blobs 1000,10000] [--blob-size 4096] [--runs 3] [--dir DIR]
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { parseArgs } from 'node:util'
import { Level } from 'level'
import { pino } from 'pino'
import { parseDigest } from '../../src/oci/digest.js'
import { BlobStore, readFully } from '../../src/store/blob-store.js'
import type { BlobMeta } from '../../src/store/types.js'

const log = pino({ level: 'silent' })

const { values } = parseArgs({
  options: {
    blobs: { type: 'string', default: '1000,10000' },
    'blob-size': { type: 'string', default: '4096' },
    runs: { type: 'string', default: '3' },
    dir: { type: 'string' },
  },
})
const COUNTS = values.blobs.split(',').map(Number)
const BLOB_SIZE = Number(values['blob-size'])
const RUNS = Number(values.runs)

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] as number
}

function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`
}

/** A store as a long-running daemon would leave it: n blob files and their index entries. */
async function populate(dir: string, n: number): Promise<string[]> {
  const digests: string[] = []
  const metas: BlobMeta[] = []
  const now = Date.now()
  for (let i = 0; i < n; i++) {
    const bytes = randomBytes(BLOB_SIZE)
    const digest = sha256(bytes)
    const path = join(dir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))
    await mkdir(dirname(path), { recursive: true })
    await writeFile(path, bytes)
    digests.push(digest)
    metas.push({ digest, size: bytes.length, addedAt: now - n + i, lastAccess: now - n + i })
  }
  await mkdir(join(dir, 'tmp'), { recursive: true })
  const db = new Level<string, unknown>(join(dir, 'index'), { valueEncoding: 'json' })
  const blobs = db.sublevel<string, BlobMeta>('blobs', { valueEncoding: 'json' })
  for (let i = 0; i < metas.length; i += 1000) {
    await blobs.batch(metas.slice(i, i + 1000).map((m) => ({ type: 'put' as const, key: m.digest, value: m })))
  }
  await db.close()
  return digests
}

async function timeIt(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return performance.now() - t0
}

async function opsPerSecond(n: number, fn: (i: number) => unknown): Promise<number> {
  const t0 = performance.now()
  for (let i = 0; i < n; i++) await fn(i)
  return n / ((performance.now() - t0) / 1000)
}

function fmt(n: number): string {
  return n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(1)
}

async function main(): Promise<void> {
  const root = values.dir ?? (await mkdtemp(join(tmpdir(), 'shoal-bench-store-')))
  const result: Record<string, number> = {}
  try {
    console.log(`store benchmark in ${root} (blobs of ${BLOB_SIZE} bytes, median of ${RUNS} runs)\n`)
    console.log('start-up (open + reconcile, no re-hash)')
    let bigDir = ''
    let bigDigests: string[] = []
    for (const n of COUNTS) {
      const dir = join(root, `startup-${n}`)
      const digests = await populate(dir, n)
      const times: number[] = []
      for (let r = 0; r < RUNS; r++) {
        let store: BlobStore | undefined
        times.push(await timeIt(async () => (store = await BlobStore.open(dir, log))))
        if (store?.usage().blobs !== n) throw new Error(`loaded ${store?.usage().blobs} blobs, expected ${n}`)
        await store.close()
      }
      result[`startup_${n}_ms`] = median(times)
      console.log(`  ${String(n).padStart(6)} blobs: ${median(times).toFixed(0).padStart(5)} ms   (runs: ${times.map((t) => t.toFixed(0)).join(', ')} ms)`)
      bigDir = dir
      bigDigests = digests
    }

    console.log('\nindex operations')
    const store = await BlobStore.open(bigDir, log)
    const n = bigDigests.length
    const stat = await opsPerSecond(200_000, (i) => store.stat(bigDigests[i % n] as string))
    const touch = await opsPerSecond(200_000, (i) => store.touch(bigDigests[i % n] as string))
    const tag = { digest: bigDigests[0] as string, mediaType: 'application/vnd.oci.image.manifest.v1+json', size: 1234, checkedAt: Date.now() }
    const putTag = await opsPerSecond(10_000, (i) => store.putTag(`r.test/a/b:${i}|accept`, tag))
    const getTag = await opsPerSecond(10_000, (i) => store.getTag(`r.test/a/b:${i}|accept`))
    const manifest = randomBytes(2048)
    const putManifest = await opsPerSecond(5_000, (i) => {
      const bytes = Buffer.concat([manifest, Buffer.from(String(i))])
      return store.putManifest({ digest: sha256(bytes), mediaType: 'application/json', bytes })
    })
    const commits = await opsPerSecond(500, async () => {
      const bytes = randomBytes(BLOB_SIZE)
      const w = await store.createWriter(parseDigest(sha256(bytes)), bytes.length)
      await w.write(bytes)
      await w.commit()
      await w.close()
    })
    const rows: [string, string, number][] = [
      ['stat (in-memory lookup)', 'stat_ops', stat],
      ['touch (LRU update)', 'touch_ops', touch],
      ['putTag (LevelDB put)', 'put_tag_ops', putTag],
      ['getTag (LevelDB get)', 'get_tag_ops', getTag],
      ['putManifest (LevelDB put, 2 KiB)', 'put_manifest_ops', putManifest],
      [`commit ${BLOB_SIZE} B blob (write+hash+fsync+rename+index)`, 'commit_ops', commits],
    ]
    for (const [label, key, v] of rows) {
      result[`${key}_per_s`] = Math.round(v)
      console.log(`  ${label.padEnd(56)} ${fmt(v).padStart(12)} ops/s`)
    }

    console.log('\neviction')
    const before = store.usage()
    const t = await timeIt(() => store.evict(Number.POSITIVE_INFINITY))
    const after = store.usage()
    const evicted = before.blobs - after.blobs
    const freed = before.bytes - after.bytes
    result.evict_blobs_per_s = Math.round(evicted / (t / 1000))
    result.evict_mb_per_s = Math.round(freed / 1e6 / (t / 1000))
    console.log(`  evicted ${evicted} blobs (${(freed / 1e6).toFixed(1)} MB) in ${t.toFixed(0)} ms: ${fmt(evicted / (t / 1000))} blobs/s, ${fmt(freed / 1e6 / (t / 1000))} MB/s`)
    await store.close()
    const reopened = await timeIt(async () => (await BlobStore.open(bigDir, log)).close())
    console.log(`  reopen after evicting everything: ${reopened.toFixed(0)} ms`)

    Object.assign(result, await chunkReads(root))
    console.log(`\n${JSON.stringify(result)}`)
  } finally {
    if (values.dir === undefined) await rm(root, { recursive: true, force: true })
  }
}

/**
 * A 64 MiB partial blob written chunk by chunk, then every 1 MiB chunk read back from its file
 * into one reused buffer, as a peer's or a reader's read did before chunks were kept in memory,
 * against the same chunks copied from buffers in memory: CPU (user + system) per MiB, medians.
 */
async function chunkReads(root: string): Promise<Record<string, number>> {
  const CHUNK = 1024 * 1024
  const chunks = Array.from({ length: 64 }, () => randomBytes(CHUNK))
  const store = await BlobStore.open(join(root, 'chunk-reads'), log)
  const writer = await store.createWriter(parseDigest(sha256(Buffer.concat(chunks))), chunks.length * CHUNK)
  try {
    for (const [i, c] of chunks.entries()) await writer.writeAt(i * CHUNK, c)
    const into = Buffer.allocUnsafeSlow(CHUNK)
    const cpuPerMiB = async (read: (i: number) => Promise<void> | void): Promise<number> => {
      const before = process.cpuUsage()
      for (let i = 0; i < chunks.length; i++) await read(i)
      const used = process.cpuUsage(before)
      return (used.user + used.system) / 1000 / chunks.length
    }
    const file: number[] = []
    const memory: number[] = []
    for (let r = 0; r < RUNS * 3; r++) {
      file.push(await cpuPerMiB((i) => readFully(writer.fh, into, i * CHUNK)))
      memory.push(await cpuPerMiB((i) => void into.set(chunks[i] as Buffer)))
    }
    if (!into.equals(chunks.at(-1) as Buffer)) throw new Error('the last chunk read back differs')
    const [f, m] = [median(file), median(memory)]
    console.log('\na verified chunk read back for a peer or a reader (1 MiB, CPU per MiB)')
    console.log(`  from the partial file (page cache): ${f.toFixed(3)} ms; from memory: ${m.toFixed(3)} ms; file ÷ memory ${(f / m).toFixed(1)}×`)
    return { chunk_read_file_ms_per_mib: Number(f.toFixed(3)), chunk_read_memory_ms_per_mib: Number(m.toFixed(3)) }
  } finally {
    await writer.abandon(false)
    await writer.close()
    await store.close()
  }
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
