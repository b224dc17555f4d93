import { createHash, type Hash } from 'node:crypto'
import { constants, createReadStream, type ReadStream } from 'node:fs'
import { type FileHandle, mkdir, open, readdir, rename, rm, stat, statfs, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import type { Logger } from 'pino'
import type { Digest } from '../oci/digest.js'
import { DigestMismatchError, isNoSpace, SizeMismatchError, StoreError, StoreFullError, StoreLockedError } from './errors.js'
import type {
  ChunkTableRecord,
  BlobMeta,
  EvictionResult,
  ManifestRecord,
  PartialMeta,
  PinRecord,
  ReconcileReport,
  StoreOptions,
  StoreUsage,
  TagRecord,
  VerifyResult,
} from './types.js'

interface StoredManifest {
  mediaType: string
  bytes: string // base64
  storedAt?: number
}

/** A held blob: its metadata, and when its access time was last written to the index. */
interface Entry {
  readonly meta: BlobMeta
  persistedAccess: number
}

/** Touching a blob rewrites its index entry at most this often. */
const ACCESS_WRITE_INTERVAL_MS = 60_000
const READ_HIGH_WATER_MARK = 1024 * 1024
const HASH_CHUNK_BYTES = 1024 * 1024
/** A partial download records its progress in the index every this many bytes. */
const CHECKPOINT_BYTES = 8 * 1024 * 1024
/** Free space kept on the file system beyond what blobs need: 1% of it, at most this much. */
const DISK_MARGIN_MAX_BYTES = 64 * 1024 * 1024
const STAT_CONCURRENCY = 64
const DEFAULT_HIGH_WATERMARK = 0.9
const DEFAULT_LOW_WATERMARK = 0.8
const DEFAULT_MANIFEST_MAX_BYTES = 256 * 1024 * 1024
const DEFAULT_MAX_TAGS = 100_000
const HEX_RE = { sha256: /^[a-f0-9]{64}$/, sha512: /^[a-f0-9]{128}$/ } as const

type EvictListener = (digest: string) => void

/**
 * The content-addressed store: blob files under `blobs/<alg>/<xx>/<hex>`, written to
 * `tmp/<alg>-<hex>.partial` and renamed into place only after their digest matched, and a LevelDB
 * index holding per-blob metadata, partial downloads, pins, and the manifest and tag caches. The
 * index is loaded into memory at start (a few hundred bytes a blob), so lookups on the request
 * path never touch LevelDB.
 *
 * Disk use is bounded by a quota (absolute and/or a share of the file system): above the high
 * watermark, least-recently-used blobs that are neither pinned nor in use (being read or written)
 * are evicted until usage is below the low watermark. A blob that cannot fit is refused with
 * StoreFullError, and the caller streams it through uncached.
 *
 * Crash safety: a blob enters `blobs/` only complete and verified; the index is reconciled with
 * the files at every start (entries without files dropped, orphan files re-hashed and re-indexed
 * or removed, unknown temp files removed), without re-hashing the files the index knows.
 */
export class BlobStore {
  readonly dataDir: string
  private readonly db: Level<string, unknown>
  private readonly blobsDb
  private readonly partialsDb
  private readonly chunksDb
  private readonly pinsDb
  private readonly manifestsDb
  private readonly tagsDb
  private readonly log: Logger
  private readonly opts: StoreOptions

  /** complete blobs, least recently used first */
  private readonly blobs = new Map<string, Entry>()
  private readonly partials = new Map<string, PartialMeta>()
  /** partial downloads with a live writer */
  private readonly writing = new Map<string, BlobWriter>()
  /** digest → readers and writers holding it */
  private readonly inUse = new Map<string, number>()
  private readonly pins = new Map<string, PinRecord>()
  /** digest → how many pins name it */
  private readonly pinned = new Map<string, number>()
  /** manifests by digest, least recently used first */
  private readonly manifests = new Map<string, number>()
  /** tag keys, oldest answer first */
  private readonly tags = new Set<string>()
  private readonly evictListeners = new Set<EvictListener>()

  private bytes = 0
  private partialBytes = 0
  private manifestBytes = 0
  private evictedBlobs = 0
  private evictedBytes = 0
  private fsTotal = 0
  private quota = Number.POSITIVE_INFINITY
  private high = Number.POSITIVE_INFINITY
  private low = Number.POSITIVE_INFINITY
  private diskMargin = 0
  private readonly manifestMaxBytes: number
  private readonly maxTags: number
  /** one eviction at a time */
  private evicting: Promise<unknown> = Promise.resolve()
  private gcScheduled = false
  private closed = false
  report: ReconcileReport | undefined

  private constructor(dataDir: string, db: Level<string, unknown>, log: Logger, opts: StoreOptions) {
    this.dataDir = dataDir
    this.db = db
    this.blobsDb = db.sublevel<string, BlobMeta>('blobs', { valueEncoding: 'json' })
    this.partialsDb = db.sublevel<string, PartialMeta>('partials', { valueEncoding: 'json' })
    this.chunksDb = db.sublevel<string, ChunkTableRecord>('chunks', { valueEncoding: 'json' })
    this.pinsDb = db.sublevel<string, PinRecord>('pins', { valueEncoding: 'json' })
    this.manifestsDb = db.sublevel<string, StoredManifest>('manifests', { valueEncoding: 'json' })
    this.tagsDb = db.sublevel<string, TagRecord>('tags', { valueEncoding: 'json' })
    this.log = log
    this.opts = opts
    this.manifestMaxBytes = opts.manifestMaxBytes ?? DEFAULT_MANIFEST_MAX_BYTES
    this.maxTags = opts.maxTags ?? DEFAULT_MAX_TAGS
  }

  static async open(dataDir: string, log: Logger, options: StoreOptions = {}): Promise<BlobStore> {
    await mkdir(join(dataDir, 'tmp'), { recursive: true })
    await mkdir(join(dataDir, 'blobs'), { recursive: true })
    const db = new Level<string, unknown>(join(dataDir, 'index'), { valueEncoding: 'json' })
    try {
      await db.open()
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause
      if (cause?.code === 'LEVEL_LOCKED') throw new StoreLockedError(dataDir, { cause: err })
      throw new StoreError('STORE_OPEN', `cannot open index in ${dataDir}: ${(err as Error).message}`, { cause: err })
    }
    const store = new BlobStore(dataDir, db, log, options)
    try {
      await store.computeQuota()
      store.report = await store.load()
    } catch (err) {
      await db.close()
      throw err
    }
    if (store.total() > store.high) store.scheduleGc()
    return store
  }

  private async computeQuota(): Promise<void> {
    const { total } = await this.fsStat()
    this.fsTotal = total
    this.diskMargin = Math.min(DISK_MARGIN_MAX_BYTES, Math.floor(total / 100))
    const caps: number[] = []
    if (this.opts.maxBytes) caps.push(this.opts.maxBytes)
    if (this.opts.maxPercent) caps.push(Math.floor((total * this.opts.maxPercent) / 100))
    if (caps.length === 0) return
    this.quota = Math.min(...caps)
    this.high = Math.floor(this.quota * (this.opts.highWatermark ?? DEFAULT_HIGH_WATERMARK))
    this.low = Math.floor(this.quota * (this.opts.lowWatermark ?? DEFAULT_LOW_WATERMARK))
  }

  private async fsStat(): Promise<{ total: number; free: number }> {
    if (this.opts.statfs) return this.opts.statfs(this.dataDir)
    const s = await statfs(this.dataDir)
    return { total: s.blocks * s.bsize, free: s.bavail * s.bsize }
  }

  // ---- start-up reconciliation ----------------------------------------------------------------

  private async load(): Promise<ReconcileReport> {
    const t0 = performance.now()
    const tmp = join(this.dataDir, 'tmp')

    // Partial downloads: keep those the index knows whose file is no longer than the blob.
    const tmpFiles = new Map<string, number>()
    for (const dirent of await readdir(tmp, { withFileTypes: true })) {
      const st = dirent.isFile() ? await stat(join(tmp, dirent.name)).catch(() => null) : null
      tmpFiles.set(dirent.name, st?.size ?? -1)
    }
    const dropPartials: string[] = []
    for await (const [digest, rec] of this.partialsDb.iterator()) {
      const name = partialName(digest)
      const size = tmpFiles.get(name)
      if (size === undefined || size < 0 || size > rec.size) {
        dropPartials.push(digest)
        continue
      }
      tmpFiles.delete(name)
      this.partials.set(digest, { ...rec, written: size })
      this.partialBytes += rec.size
    }
    if (dropPartials.length > 0) await this.partialsDb.batch(dropPartials.map((key) => ({ type: 'del' as const, key })))
    for (const name of tmpFiles.keys()) await rm(join(tmp, name), { force: true, recursive: true })

    // Complete blobs: every index entry needs its file at the right size; files the index lacks
    // are orphans (a crash between rename and index write, or during eviction).
    const files = await this.scanBlobFiles()
    const entries: BlobMeta[] = []
    const drop: string[] = []
    for await (const [digest, meta] of this.blobsDb.iterator()) {
      if (files.delete(digest)) entries.push(meta)
      else drop.push(digest)
    }
    const sizeOk = await mapLimit(entries, STAT_CONCURRENCY, async (meta) => {
      const st = await stat(this.blobPath(meta.digest)).catch(() => null)
      if (st !== null && st.size === meta.size) return true
      await rm(this.blobPath(meta.digest), { force: true })
      return false
    })
    const kept: BlobMeta[] = []
    for (const [i, meta] of entries.entries()) {
      if (sizeOk[i]) kept.push(meta)
      else drop.push(meta.digest)
    }

    let reindexed = 0
    let removedOrphans = 0
    const adopted: BlobMeta[] = []
    for (const digest of files) {
      const path = this.blobPath(digest)
      const size = await hashFile(path, digestAlgorithm(digest)).then(
        ({ digest: actual, size }) => (actual === digest ? size : -1),
        () => -1,
      )
      if (size < 0) {
        await rm(path, { force: true })
        removedOrphans++
        continue
      }
      const now = Date.now()
      adopted.push({ digest, size, addedAt: now, lastAccess: now })
      reindexed++
    }
    const ops = [
      ...drop.map((key) => ({ type: 'del' as const, key })),
      ...adopted.map((meta) => ({ type: 'put' as const, key: meta.digest, value: meta })),
    ]
    if (ops.length > 0) await this.blobsDb.batch(ops)
    kept.push(...adopted)
    kept.sort((a, b) => a.lastAccess - b.lastAccess)
    for (const meta of kept) {
      this.blobs.set(meta.digest, { meta, persistedAccess: meta.lastAccess })
      this.bytes += meta.size
    }

    for await (const [key, pin] of this.pinsDb.iterator()) this.addPin(key, pin)
    const manifests: [string, number, number][] = []
    for await (const [digest, m] of this.manifestsDb.iterator()) {
      manifests.push([digest, Math.floor((m.bytes.length * 3) / 4), m.storedAt ?? 0])
    }
    manifests.sort((a, b) => a[2] - b[2])
    for (const [digest, size] of manifests) {
      this.manifests.set(digest, size)
      this.manifestBytes += size
    }
    const tags: [string, number][] = []
    for await (const [key, t] of this.tagsDb.iterator()) tags.push([key, t.checkedAt])
    tags.sort((a, b) => a[1] - b[1])
    for (const [key] of tags) this.tags.add(key)

    const report: ReconcileReport = {
      blobs: this.blobs.size,
      droppedEntries: drop.length,
      reindexedOrphans: reindexed,
      removedOrphans,
      partials: this.partials.size,
      removedTemp: tmpFiles.size + dropPartials.length,
      ms: Math.round(performance.now() - t0),
    }
    if (report.droppedEntries + report.reindexedOrphans + report.removedOrphans + report.removedTemp > 0) {
      this.log.warn(report, 'store reconciled with its files after an unclean stop')
    } else {
      this.log.debug(report, 'store loaded')
    }
    return report
  }

  /** Every file under blobs/ whose name is a digest; anything else there is removed. */
  private async scanBlobFiles(): Promise<Set<string>> {
    const found = new Set<string>()
    const root = join(this.dataDir, 'blobs')
    for (const alg of await readdir(root)) {
      const re = HEX_RE[alg as keyof typeof HEX_RE]
      if (re === undefined) {
        await rm(join(root, alg), { recursive: true, force: true })
        continue
      }
      for (const prefix of await readdir(join(root, alg))) {
        for (const name of await readdir(join(root, alg, prefix))) {
          if (re.test(name) && name.startsWith(prefix)) found.add(`${alg}:${name}`)
          else await rm(join(root, alg, prefix, name), { recursive: true, force: true })
        }
      }
    }
    return found
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.evicting.catch(() => {})
    await this.db.close()
  }

  // ---- lookups --------------------------------------------------------------------------------

  usage(): StoreUsage {
    const bounded = Number.isFinite(this.quota)
    return {
      bytes: this.bytes,
      blobs: this.blobs.size,
      manifests: this.manifests.size,
      manifestBytes: this.manifestBytes,
      tags: this.tags.size,
      partials: this.partials.size,
      partialBytes: this.partialBytes,
      pinnedBlobs: [...this.pinned.keys()].filter((d) => this.blobs.has(d)).length,
      quotaBytes: bounded ? this.quota : null,
      highWatermarkBytes: bounded ? this.high : null,
      lowWatermarkBytes: bounded ? this.low : null,
      evictedBlobs: this.evictedBlobs,
      evictedBytes: this.evictedBytes,
    }
  }

  blobPath(digest: string): string {
    const colon = digest.indexOf(':')
    const alg = digest.slice(0, colon)
    const hex = digest.slice(colon + 1)
    return join(this.dataDir, 'blobs', alg, hex.slice(0, 2), hex)
  }

  partialPath(digest: string): string {
    return join(this.dataDir, 'tmp', partialName(digest))
  }

  /** The blob's metadata if it is held complete and verified. */
  stat(digest: string): BlobMeta | undefined {
    return this.blobs.get(digest)?.meta
  }

  /** Complete blobs, least recently used first. */
  *list(): IterableIterator<BlobMeta> {
    for (const entry of this.blobs.values()) yield entry.meta
  }

  listPartials(): PartialMeta[] {
    return [...this.partials.values()].map((p) => {
      const w = this.writing.get(p.digest)
      return w === undefined ? { ...p } : { ...p, written: w.written }
    })
  }

  isPinned(digest: string): boolean {
    return this.pinned.has(digest)
  }

  isInUse(digest: string): boolean {
    return this.inUse.has(digest)
  }

  /** Records a read: the blob becomes the most recently used; the index is rewritten at most once a minute. */
  touch(digest: string): void {
    const entry = this.blobs.get(digest)
    if (entry === undefined) return
    const now = Date.now()
    entry.meta.lastAccess = now
    this.blobs.delete(digest)
    this.blobs.set(digest, entry)
    if (now - entry.persistedAccess < ACCESS_WRITE_INTERVAL_MS) return
    entry.persistedAccess = now
    this.blobsDb.put(digest, entry.meta).catch((err) => this.log.warn({ err, digest }, 'index update failed'))
  }

  /** A byte stream of a stored blob; `end` is inclusive. The blob is not evicted while it is read. */
  createReadStream(digest: string, start: number, end: number): ReadStream {
    this.acquire(digest)
    const stream = createReadStream(this.blobPath(digest), { start, end, highWaterMark: READ_HIGH_WATER_MARK })
    stream.once('close', () => this.release(digest))
    return stream
  }

  /**
   * Fills `into` with the blob's bytes from `start` (one positional read per call, no stream):
   * for callers that reuse their buffers. The blob is not evicted while it is read.
   */
  async readInto(digest: string, start: number, into: Uint8Array): Promise<void> {
    this.acquire(digest)
    try {
      const fh = await open(this.blobPath(digest), 'r')
      try {
        await readFully(fh, into, start)
      } finally {
        await fh.close()
      }
    } finally {
      this.release(digest)
    }
  }

  /** @internal marks a blob in use (never evicted) until release() */
  acquire(digest: string): void {
    this.inUse.set(digest, (this.inUse.get(digest) ?? 0) + 1)
  }

  /** @internal */
  release(digest: string): void {
    const n = (this.inUse.get(digest) ?? 1) - 1
    if (n > 0) this.inUse.set(digest, n)
    else this.inUse.delete(digest)
  }

  onEvict(listener: EvictListener): () => void {
    this.evictListeners.add(listener)
    return () => this.evictListeners.delete(listener)
  }

  // ---- writing --------------------------------------------------------------------------------

  /**
   * A partial file to stream a blob into; it enters the store only through `commit()`. Reserves
   * the blob's size against the quota first, evicting if needed; throws StoreFullError when it
   * cannot fit (quota or disk).
   */
  async createWriter(digest: Digest, expectedSize: number): Promise<BlobWriter> {
    const key = digest.value
    if (this.writing.has(key)) throw new StoreError('WRITER_BUSY', `blob ${key} is already being written`)
    const old = this.partials.get(key)
    if (old !== undefined) await this.dropPartial(key)
    await this.reserve(key, expectedSize)
    const now = Date.now()
    const meta: PartialMeta = { digest: key, size: expectedSize, written: 0, updatedAt: now }
    this.partials.set(key, meta)
    let fh: FileHandle
    try {
      await this.partialsDb.put(key, meta)
      fh = await open(this.partialPath(key), constants.O_RDWR | constants.O_CREAT | constants.O_TRUNC, 0o644)
    } catch (err) {
      await this.dropPartial(key)
      if (isNoSpace(err)) throw new StoreFullError('disk full: cannot start a partial file', { cause: err })
      throw err
    }
    const writer = new BlobWriter(this, digest, expectedSize, fh, createHash(digest.algorithm), 0)
    this.writing.set(key, writer)
    this.acquire(key)
    return writer
  }

  /**
   * Reopens a partial download left by an earlier run or a failed attempt: re-hashes the bytes on
   * disk and returns a writer positioned after them, or undefined when there is none.
   */
  async resumeWriter(digest: Digest): Promise<BlobWriter | undefined> {
    const key = digest.value
    const meta = this.partials.get(key)
    if (meta === undefined || this.writing.has(key)) return undefined
    const path = this.partialPath(key)
    let fh: FileHandle | undefined
    try {
      fh = await open(path, constants.O_RDWR)
      const hash = createHash(digest.algorithm)
      let size = (await fh.stat()).size
      if (size > meta.size) throw new SizeMismatchError(meta.size, size)
      if (meta.sparse === true && size > meta.written) {
        await fh.truncate(meta.written)
        size = meta.written
      }
      const buf = Buffer.allocUnsafe(Math.min(HASH_CHUNK_BYTES, Math.max(size, 1)))
      for (let pos = 0; pos < size; ) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos)
        if (bytesRead === 0) throw new StoreError('SHORT_READ', 'partial file shrank while re-hashing')
        hash.update(buf.subarray(0, bytesRead))
        pos += bytesRead
      }
      // another caller may have taken it meanwhile
      if (this.writing.has(key) || this.partials.get(key) !== meta) {
        await fh.close()
        return undefined
      }
      const writer = new BlobWriter(this, digest, meta.size, fh, hash, size)
      this.writing.set(key, writer)
      this.acquire(key)
      meta.written = size
      return writer
    } catch (err) {
      await fh?.close().catch(() => {})
      this.log.warn({ err, digest: key }, 'partial download unreadable: discarding it')
      await this.dropPartial(key)
      return undefined
    }
  }

  /** @internal progress of a partial, recorded now and then */
  checkpoint(writer: BlobWriter, sparse = false): void {
    const meta = this.partials.get(writer.digest.value)
    if (meta === undefined) return
    if (sparse) meta.sparse = true
    meta.written = writer.written
    meta.updatedAt = Date.now()
    this.partialsDb.put(meta.digest, meta).catch((err) => this.log.debug({ err, digest: meta.digest }, 'checkpoint failed'))
  }

  /** @internal called by BlobWriter once the bytes are verified and synced */
  async adopt(writer: BlobWriter): Promise<void> {
    const digest = writer.digest.value
    const size = writer.expectedSize
    const final = this.blobPath(digest)
    const tmp = this.partialPath(digest)
    try {
      await mkdir(join(final, '..'), { recursive: true })
      await rename(tmp, final)
    } catch (err) {
      await this.dropPartial(digest)
      if (isNoSpace(err)) throw new StoreFullError('disk full: cannot commit blob', { cause: err })
      throw err
    }
    const now = Date.now()
    const meta: BlobMeta = { digest, size, addedAt: now, lastAccess: now }
    try {
      await this.db.batch([
        { type: 'del', sublevel: this.partialsDb, key: digest },
        { type: 'put', sublevel: this.blobsDb, key: digest, value: meta },
      ] as never)
    } catch (err) {
      // not indexed: the file must not stay (it would be re-hashed as an orphan at start anyway)
      await rm(final, { force: true })
      this.forgetPartial(digest)
      if (isNoSpace(err)) throw new StoreFullError('disk full: cannot index blob', { cause: err })
      throw new StoreError('INDEX_WRITE', `cannot index blob ${digest}`, { cause: err })
    }
    this.forgetPartial(digest)
    if (!this.blobs.has(digest)) this.bytes += size
    this.blobs.set(digest, { meta, persistedAccess: now })
    if (this.total() > this.high) this.scheduleGc()
  }

  /** @internal a writer gave up: keep its bytes to resume later, or delete them */
  async suspend(writer: BlobWriter, keep: boolean): Promise<void> {
    const digest = writer.digest.value
    if (this.writing.get(digest) === writer) this.writing.delete(digest)
    if (!keep) {
      await this.dropPartial(digest)
      return
    }
    const meta = this.partials.get(digest)
    if (meta === undefined) return
    meta.written = writer.written
    meta.updatedAt = Date.now()
    await this.partialsDb.put(digest, meta).catch((err) => this.log.warn({ err, digest }, 'cannot record partial download'))
  }

  /** @internal */
  detach(writer: BlobWriter): void {
    if (this.writing.get(writer.digest.value) === writer) this.writing.delete(writer.digest.value)
  }

  private forgetPartial(digest: string): void {
    const meta = this.partials.get(digest)
    if (meta === undefined) return
    this.partials.delete(digest)
    this.partialBytes -= meta.size
  }

  private async dropPartial(digest: string): Promise<void> {
    this.forgetPartial(digest)
    await unlink(this.partialPath(digest)).catch(() => {})
    await this.partialsDb.del(digest).catch((err) => this.log.warn({ err, digest }, 'cannot drop partial download from the index'))
  }

  // ---- quota and eviction ---------------------------------------------------------------------

  /** Blob bytes counted against the quota: complete blobs plus the full size of every partial. */
  private total(): number {
    return this.bytes + this.partialBytes
  }

  private async reserve(digest: string, size: number): Promise<void> {
    if (size > this.quota) throw new StoreFullError(`blob ${digest} (${size} bytes) is larger than the store quota (${this.quota} bytes)`)
    for (let attempt = 0; ; attempt++) {
      const { free } = await this.fsStat()
      let pending = 0
      for (const w of this.writing.values()) pending += w.expectedSize - w.written
      const overQuota = this.total() + size - this.quota
      const diskShort = size + pending + this.diskMargin - free
      if (overQuota <= 0 && diskShort <= 0) {
        this.partialBytes += size
        return
      }
      // Make room down to the low watermark, so that the next blobs fit without evicting again.
      const need = Math.max(overQuota > 0 ? this.total() + size - this.low : 0, diskShort, 0)
      const { freedBytes } = attempt < 2 ? await this.evict(need) : { freedBytes: 0 }
      if (freedBytes === 0) {
        const why = overQuota > 0 ? `the store quota (${this.quota} bytes) is used up` : `the disk has ${free} bytes free`
        throw new StoreFullError(`cannot store blob ${digest} (${size} bytes): ${why} and nothing more can be evicted`)
      }
    }
  }

  private scheduleGc(): void {
    if (this.gcScheduled || this.closed) return
    this.gcScheduled = true
    setImmediate(() => {
      this.gcScheduled = false
      this.gc().catch((err) => this.log.warn({ err }, 'eviction failed'))
    })
  }

  /** Evicts blobs now until usage is below the low watermark (nothing when already below). */
  async gc(): Promise<EvictionResult> {
    const need = this.total() - this.low
    if (!(need > 0)) return { evicted: 0, freedBytes: 0 }
    const result = await this.evict(need)
    if (this.total() > this.high) {
      this.log.warn({ usage: this.total(), quota: this.quota }, 'store above its high watermark: the rest is pinned or in use')
    }
    return result
  }

  /**
   * Frees at least `atLeast` bytes if it can: idle partial downloads and complete blobs, least
   * recently used first, skipping pinned and in-use ones. Index and file go together, then the
   * eviction listeners hear of each blob.
   */
  evict(atLeast: number): Promise<EvictionResult> {
    const run = this.evicting.then(() => this.evictNow(atLeast))
    this.evicting = run.catch(() => {})
    return run
  }

  private async evictNow(atLeast: number): Promise<EvictionResult> {
    if (this.closed) return { evicted: 0, freedBytes: 0 }
    // Choose synchronously, and take the victims out of the in-memory index at once: from here
    // nobody can open them.
    const blobs: BlobMeta[] = []
    const partials: PartialMeta[] = []
    let freed = 0
    const idlePartials = [...this.partials.values()]
      .filter((p) => !this.writing.has(p.digest) && !this.pinned.has(p.digest))
      .sort((a, b) => a.updatedAt - b.updatedAt)
    let pi = 0
    for (const [digest, entry] of this.blobs) {
      if (freed >= atLeast) break
      while (pi < idlePartials.length && freed < atLeast && (idlePartials[pi] as PartialMeta).updatedAt <= entry.meta.lastAccess) {
        const p = idlePartials[pi++] as PartialMeta
        partials.push(p)
        freed += p.size
      }
      if (freed >= atLeast) break
      if (this.pinned.has(digest) || this.inUse.has(digest)) continue
      blobs.push(entry.meta)
      freed += entry.meta.size
    }
    while (pi < idlePartials.length && freed < atLeast) {
      const p = idlePartials[pi++] as PartialMeta
      partials.push(p)
      freed += p.size
    }
    if (blobs.length === 0 && partials.length === 0) return { evicted: 0, freedBytes: 0 }
    for (const meta of blobs) {
      this.blobs.delete(meta.digest)
      this.bytes -= meta.size
    }
    for (const p of partials) this.forgetPartial(p.digest)

    // File first, then index: a crash in between leaves an index entry without a file, which the
    // next start drops (cheaper than re-hashing an orphan).
    await mapLimit(blobs, STAT_CONCURRENCY, (meta) => rm(this.blobPath(meta.digest), { force: true }))
    await mapLimit(partials, STAT_CONCURRENCY, (p) => rm(this.partialPath(p.digest), { force: true }))
    await this.db
      .batch([
        ...blobs.map((meta) => ({ type: 'del', sublevel: this.blobsDb, key: meta.digest })),
        ...partials.map((p) => ({ type: 'del', sublevel: this.partialsDb, key: p.digest })),
        ...blobs.map((meta) => ({ type: 'del', sublevel: this.chunksDb, key: meta.digest })),
      ] as never)
      .catch((err: unknown) => this.log.warn({ err }, 'cannot drop evicted blobs from the index (the next start will)'))
    this.evictedBlobs += blobs.length
    this.evictedBytes += freed
    this.log.info({ blobs: blobs.length, partials: partials.length, bytes: freed, usage: this.total(), quota: this.quota }, 'evicted blobs')
    for (const meta of blobs) this.emitEvict(meta.digest)
    return { evicted: blobs.length + partials.length, freedBytes: freed }
  }

  private emitEvict(digest: string): void {
    for (const listener of this.evictListeners) {
      try {
        listener(digest)
      } catch (err) {
        this.log.warn({ err, digest }, 'eviction listener failed')
      }
    }
  }

  /** Re-hashes every complete blob; those missing or not matching their digest are dropped. */
  async verify(options: { signal?: AbortSignal } = {}): Promise<VerifyResult> {
    const bad: string[] = []
    let checked = 0
    let checkedBytes = 0
    for (const meta of [...this.list()]) {
      options.signal?.throwIfAborted()
      if (!this.blobs.has(meta.digest)) continue
      this.acquire(meta.digest)
      let ok: boolean
      try {
        const r = await hashFile(this.blobPath(meta.digest), digestAlgorithm(meta.digest))
        ok = r.digest === meta.digest && r.size === meta.size
      } catch {
        ok = false
      } finally {
        this.release(meta.digest)
      }
      checked++
      checkedBytes += meta.size
      if (ok || !this.blobs.has(meta.digest)) continue
      bad.push(meta.digest)
      this.log.error({ digest: meta.digest }, 'blob file does not match its digest: dropping it')
      this.blobs.delete(meta.digest)
      this.bytes -= meta.size
      await rm(this.blobPath(meta.digest), { force: true })
      await this.blobsDb.del(meta.digest).catch(() => {})
      this.emitEvict(meta.digest)
    }
    return { checked, checkedBytes, bad }
  }

  // ---- pins -----------------------------------------------------------------------------------

  async pin(record: PinRecord): Promise<void> {
    const key = pinKey(record.ref, record.platform)
    await this.pinsDb.put(key, record)
    this.removePin(key)
    this.addPin(key, record)
  }

  /** Removes the pins of `ref` (only the one for `platform` when given); returns them. */
  async unpin(ref: string, platform?: string): Promise<PinRecord[]> {
    const removed = [...this.pins.entries()].filter(([, p]) => p.ref === ref && (platform === undefined || p.platform === platform))
    if (removed.length === 0) return []
    await this.pinsDb.batch(removed.map(([key]) => ({ type: 'del' as const, key })))
    for (const [key] of removed) this.removePin(key)
    if (this.total() > this.high) this.scheduleGc()
    return removed.map(([, p]) => p)
  }

  listPins(): PinRecord[] {
    return [...this.pins.values()]
  }

  private addPin(key: string, record: PinRecord): void {
    this.pins.set(key, record)
    for (const d of new Set([...record.manifests, ...record.blobs])) this.pinned.set(d, (this.pinned.get(d) ?? 0) + 1)
  }

  private removePin(key: string): void {
    const record = this.pins.get(key)
    if (record === undefined) return
    this.pins.delete(key)
    for (const d of new Set([...record.manifests, ...record.blobs])) {
      const n = (this.pinned.get(d) ?? 1) - 1
      if (n > 0) this.pinned.set(d, n)
      else this.pinned.delete(d)
    }
  }

  // ---- chunk tables ---------------------------------------------------------------------------

  /**
   * A blob's chunk table (per-chunk sha256 for one chunk size), computed by this node from bytes
   * that matched the blob's digest. A table is a function of the blob's content, so a stale
   * entry never lies; entries leave with their blob.
   */
  async getChunkTable(digest: string): Promise<ChunkTableRecord | undefined> {
    return this.chunksDb.get(digest)
  }

  async putChunkTable(digest: string, record: ChunkTableRecord): Promise<void> {
    await this.chunksDb.put(digest, record)
  }

  // ---- manifests and tags (their own caps) ----------------------------------------------------

  async getManifest(digest: string): Promise<ManifestRecord | undefined> {
    const stored = await this.manifestsDb.get(digest)
    if (stored === undefined) return undefined
    const size = this.manifests.get(digest)
    if (size !== undefined) {
      this.manifests.delete(digest)
      this.manifests.set(digest, size)
    }
    return { digest, mediaType: stored.mediaType, bytes: Buffer.from(stored.bytes, 'base64') }
  }

  /** Stores manifest bytes; the caller has checked them against the digest. */
  async putManifest(record: ManifestRecord): Promise<void> {
    await this.manifestsDb.put(record.digest, { mediaType: record.mediaType, bytes: record.bytes.toString('base64'), storedAt: Date.now() })
    const old = this.manifests.get(record.digest)
    if (old !== undefined) {
      this.manifests.delete(record.digest)
      this.manifestBytes -= old
    }
    this.manifests.set(record.digest, record.bytes.length)
    this.manifestBytes += record.bytes.length
    if (this.manifestBytes <= this.manifestMaxBytes) return
    const victims: string[] = []
    for (const [digest, size] of this.manifests) {
      if (this.manifestBytes <= this.manifestMaxBytes) break
      if (digest === record.digest || this.pinned.has(digest)) continue
      victims.push(digest)
      this.manifests.delete(digest)
      this.manifestBytes -= size
    }
    if (victims.length > 0) await this.manifestsDb.batch(victims.map((key) => ({ type: 'del' as const, key })))
  }

  async getTag(key: string): Promise<TagRecord | undefined> {
    return this.tagsDb.get(key)
  }

  async putTag(key: string, record: TagRecord): Promise<void> {
    await this.tagsDb.put(key, record)
    this.tags.delete(key)
    this.tags.add(key)
    if (this.tags.size <= this.maxTags) return
    const victims: string[] = []
    for (const k of this.tags) {
      if (this.tags.size <= this.maxTags) break
      victims.push(k)
      this.tags.delete(k)
    }
    await this.tagsDb.batch(victims.map((k) => ({ type: 'del' as const, key: k })))
  }

  /** for tests and benchmarks: the file system size the quota was computed from */
  get fileSystemBytes(): number {
    return this.fsTotal
  }
}

/**
 * One blob streaming into its partial file, hashed on the fly. Positional reads of the bytes
 * written so far are allowed while it is open (that is how waiting clients are served before
 * the blob is complete); the file handle stays valid after the rename.
 */
export class BlobWriter {
  readonly digest: Digest
  readonly expectedSize: number
  readonly fh: FileHandle
  private readonly store: BlobStore
  private readonly hash: Hash
  private position: number
  private lastCheckpoint: number
  private settled = false
  private closed = false
  private sparse = false
  /** advance()'s read buffer */
  private readBack: Buffer | undefined

  constructor(store: BlobStore, digest: Digest, expectedSize: number, fh: FileHandle, hash: Hash, position: number) {
    this.store = store
    this.digest = digest
    this.expectedSize = expectedSize
    this.fh = fh
    this.hash = hash
    this.position = position
    this.lastCheckpoint = position
  }

  get written(): number {
    return this.position
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.position + chunk.byteLength > this.expectedSize) {
      throw new SizeMismatchError(this.expectedSize, this.position + chunk.byteLength)
    }
    this.hash.update(chunk)
    let offset = 0
    try {
      while (offset < chunk.byteLength) {
        const { bytesWritten } = await this.fh.write(chunk, offset, chunk.byteLength - offset, this.position)
        offset += bytesWritten
        this.position += bytesWritten
      }
    } catch (err) {
      if (isNoSpace(err)) throw new StoreFullError('disk full while writing a blob', { cause: err })
      throw err
    }
    this.checkpointIfDue()
  }

  /**
   * Writes bytes ahead of the contiguous prefix (chunks arriving out of order). They are not
   * hashed yet: `advance()` takes them into the digest once the prefix reaches them.
   */
  async writeAt(position: number, chunk: Uint8Array): Promise<void> {
    if (position < this.position || position + chunk.byteLength > this.expectedSize) {
      throw new SizeMismatchError(this.expectedSize, position + chunk.byteLength)
    }
    if (!this.sparse) {
      this.sparse = true
      this.store.checkpoint(this, true)
    }
    try {
      let offset = 0
      while (offset < chunk.byteLength) {
        const { bytesWritten } = await this.fh.write(chunk, offset, chunk.byteLength - offset, position + offset)
        offset += bytesWritten
      }
    } catch (err) {
      if (isNoSpace(err)) throw new StoreFullError('disk full while writing a blob', { cause: err })
      throw err
    }
  }

  /**
   * Extends the contiguous prefix over `bytes`, which writeAt() already put in the file at the
   * prefix's end: hashes this copy of them instead of reading them back.
   */
  advanceOver(bytes: Uint8Array): void {
    if (this.position + bytes.byteLength > this.expectedSize) throw new SizeMismatchError(this.expectedSize, this.position + bytes.byteLength)
    this.hash.update(bytes)
    this.position += bytes.byteLength
    this.checkpointIfDue()
  }

  /** Extends the contiguous prefix over `length` bytes already in the file (from writeAt), hashing them. */
  async advance(length: number): Promise<void> {
    if (this.position + length > this.expectedSize) throw new SizeMismatchError(this.expectedSize, this.position + length)
    // one buffer per writer, reused (a fresh megabyte per call is fresh pages to fault in)
    this.readBack ??= Buffer.allocUnsafeSlow(HASH_CHUNK_BYTES)
    const buf = this.readBack
    for (let done = 0; done < length; ) {
      const { bytesRead } = await this.fh.read(buf, 0, Math.min(buf.length, length - done), this.position)
      if (bytesRead === 0) throw new StoreError('SHORT_READ', 'partial file is shorter than written')
      this.hash.update(buf.subarray(0, bytesRead))
      this.position += bytesRead
      done += bytesRead
    }
    this.checkpointIfDue()
  }

  private checkpointIfDue(): void {
    if (this.position - this.lastCheckpoint >= CHECKPOINT_BYTES) {
      this.lastCheckpoint = this.position
      this.store.checkpoint(this)
    }
  }

  /** Verifies size and digest, fsyncs, renames into the store. Throws on mismatch (then abandon()). */
  async commit(): Promise<void> {
    if (this.position !== this.expectedSize) throw new SizeMismatchError(this.expectedSize, this.position)
    const actual = `${this.digest.algorithm}:${this.hash.digest('hex')}`
    if (actual !== this.digest.value) throw new DigestMismatchError(this.digest.value, actual)
    try {
      await this.fh.sync()
    } catch (err) {
      if (isNoSpace(err)) throw new StoreFullError('disk full while syncing a blob', { cause: err })
      throw err
    }
    this.settled = true
    this.store.detach(this)
    await this.store.adopt(this)
  }

  /**
   * Gives up on the blob (if not committed): `keep` leaves the bytes written so far to resume
   * from (a cut connection, a shutdown), else they are deleted (wrong bytes, disk full). The
   * handle stays open for readers until close().
   */
  async abandon(keep: boolean): Promise<void> {
    if (this.settled) return
    this.settled = true
    await this.store.suspend(this, keep && this.position < this.expectedSize)
  }

  /** @deprecated use abandon(false) */
  discard(): Promise<void> {
    return this.abandon(false)
  }

  /** Closes the file handle; the blob may be evicted from then on. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.store.release(this.digest.value)
    await this.fh.close()
  }
}

function partialName(digest: string): string {
  return `${digest.replace(':', '-')}.partial`
}

function pinKey(ref: string, platform: string | undefined): string {
  return `${ref}|${platform ?? '*'}`
}

function digestAlgorithm(digest: string): 'sha256' | 'sha512' {
  return digest.startsWith('sha512:') ? 'sha512' : 'sha256'
}

/** Fills `into` from `position` of an open file; a file that ends first is a SHORT_READ. */
export async function readFully(fh: FileHandle, into: Uint8Array, position: number): Promise<void> {
  for (let off = 0; off < into.byteLength; ) {
    const { bytesRead } = await fh.read(into, off, into.byteLength - off, position + off)
    if (bytesRead === 0) throw new StoreError('SHORT_READ', `file ends before byte ${position + into.byteLength}`)
    off += bytesRead
  }
}

/** Streams a file through a hash: its digest and size. */
export async function hashFile(path: string, algorithm: 'sha256' | 'sha512'): Promise<{ digest: string; size: number }> {
  const hash = createHash(algorithm)
  let size = 0
  for await (const chunk of createReadStream(path, { highWaterMark: HASH_CHUNK_BYTES })) {
    hash.update(chunk as Buffer)
    size += (chunk as Buffer).length
  }
  return { digest: `${algorithm}:${hash.digest('hex')}`, size }
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i] as T)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return out
}
