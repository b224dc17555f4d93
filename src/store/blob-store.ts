import { createHash, type Hash, randomBytes } from 'node:crypto'
import { constants, createReadStream, type ReadStream } from 'node:fs'
import { type FileHandle, mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import type { Logger } from 'pino'
import type { Digest } from '../oci/digest.js'
import { DigestMismatchError, SizeMismatchError, StoreError, StoreLockedError } from './errors.js'
import type { BlobMeta, ManifestRecord, StoreUsage, TagRecord } from './types.js'

interface StoredManifest {
  mediaType: string
  bytes: string // base64
}

/** Touching a blob rewrites its index entry at most this often. */
const ACCESS_WRITE_INTERVAL_MS = 60_000
const READ_HIGH_WATER_MARK = 1024 * 1024

/**
 * The content-addressed store: blob files under `blobs/<alg>/<xx>/<hex>`, written to `tmp/` and
 * renamed into place only after their digest matched, and a LevelDB index holding per-blob
 * metadata and the manifest and tag caches. The index is loaded into memory at start (a few
 * hundred bytes a blob), so lookups on the request path never touch LevelDB.
 */
export class BlobStore {
  readonly dataDir: string
  private readonly db: Level<string, unknown>
  private readonly blobsDb
  private readonly manifestsDb
  private readonly tagsDb
  private readonly blobs = new Map<string, BlobMeta>()
  private manifestCount = 0
  private bytes = 0
  private readonly log: Logger

  private constructor(dataDir: string, db: Level<string, unknown>, log: Logger) {
    this.dataDir = dataDir
    this.db = db
    this.blobsDb = db.sublevel<string, BlobMeta>('blobs', { valueEncoding: 'json' })
    this.manifestsDb = db.sublevel<string, StoredManifest>('manifests', { valueEncoding: 'json' })
    this.tagsDb = db.sublevel<string, TagRecord>('tags', { valueEncoding: 'json' })
    this.log = log
  }

  static async open(dataDir: string, log: Logger): Promise<BlobStore> {
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
    const store = new BlobStore(dataDir, db, log)
    await store.load()
    return store
  }

  private async load(): Promise<void> {
    // Partial downloads from a previous run are not resumed yet: discard them.
    const tmp = join(this.dataDir, 'tmp')
    for (const name of await readdir(tmp)) await rm(join(tmp, name), { force: true, recursive: true })
    const missing: string[] = []
    for await (const [digest, meta] of this.blobsDb.iterator()) {
      const st = await stat(this.blobPath(digest)).catch(() => null)
      if (st === null || st.size !== meta.size) {
        missing.push(digest)
        continue
      }
      this.blobs.set(digest, meta)
      this.bytes += meta.size
    }
    if (missing.length > 0) {
      await this.blobsDb.batch(missing.map((key) => ({ type: 'del' as const, key })))
      this.log.warn({ count: missing.length }, 'dropped index entries whose blob files are missing')
    }
    for await (const _ of this.manifestsDb.keys()) this.manifestCount++
  }

  async close(): Promise<void> {
    await this.db.close()
  }

  usage(): StoreUsage {
    return { bytes: this.bytes, blobs: this.blobs.size, manifests: this.manifestCount }
  }

  blobPath(digest: string): string {
    const colon = digest.indexOf(':')
    const alg = digest.slice(0, colon)
    const hex = digest.slice(colon + 1)
    return join(this.dataDir, 'blobs', alg, hex.slice(0, 2), hex)
  }

  /** The blob's metadata if it is held complete and verified. */
  stat(digest: string): BlobMeta | undefined {
    return this.blobs.get(digest)
  }

  list(): IterableIterator<BlobMeta> {
    return this.blobs.values()
  }

  /** Records a read; the index is rewritten at most once a minute per blob. */
  touch(digest: string): void {
    const meta = this.blobs.get(digest)
    if (meta === undefined) return
    const now = Date.now()
    if (now - meta.lastAccess < ACCESS_WRITE_INTERVAL_MS) return
    meta.lastAccess = now
    this.blobsDb.put(digest, meta).catch((err) => this.log.warn({ err, digest }, 'index update failed'))
  }

  /** A byte stream of a stored blob; `end` is inclusive. */
  createReadStream(digest: string, start: number, end: number): ReadStream {
    return createReadStream(this.blobPath(digest), { start, end, highWaterMark: READ_HIGH_WATER_MARK })
  }

  /** A temporary file to stream a blob into; it enters the store only through `commit()`. */
  async createWriter(digest: Digest, expectedSize: number): Promise<BlobWriter> {
    const path = join(this.dataDir, 'tmp', `${digest.hex}.${randomBytes(4).toString('hex')}`)
    const fh = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o644)
    return new BlobWriter(this, digest, expectedSize, path, fh)
  }

  /** @internal called by BlobWriter once the bytes are verified and synced */
  async adopt(digest: string, size: number, tmpPath: string): Promise<void> {
    const final = this.blobPath(digest)
    await mkdir(join(final, '..'), { recursive: true })
    await rename(tmpPath, final)
    const now = Date.now()
    const meta: BlobMeta = { digest, size, addedAt: now, lastAccess: now }
    await this.blobsDb.put(digest, meta)
    if (!this.blobs.has(digest)) this.bytes += size
    this.blobs.set(digest, meta)
  }

  async getManifest(digest: string): Promise<ManifestRecord | undefined> {
    const stored = await this.manifestsDb.get(digest)
    if (stored === undefined) return undefined
    return { digest, mediaType: stored.mediaType, bytes: Buffer.from(stored.bytes, 'base64') }
  }

  /** Stores manifest bytes; the caller has checked them against the digest. */
  async putManifest(record: ManifestRecord): Promise<void> {
    const exists = (await this.manifestsDb.get(record.digest)) !== undefined
    await this.manifestsDb.put(record.digest, { mediaType: record.mediaType, bytes: record.bytes.toString('base64') })
    if (!exists) this.manifestCount++
  }

  async getTag(key: string): Promise<TagRecord | undefined> {
    return this.tagsDb.get(key)
  }

  async putTag(key: string, record: TagRecord): Promise<void> {
    await this.tagsDb.put(key, record)
  }
}

/**
 * One blob streaming into a temporary file, hashed on the fly. Positional reads of the bytes
 * written so far are allowed while it is open (that is how waiting clients are served before
 * the blob is complete); the file handle stays valid after the rename.
 */
export class BlobWriter {
  readonly digest: Digest
  readonly expectedSize: number
  readonly fh: FileHandle
  private readonly store: BlobStore
  private readonly tmpPath: string
  private readonly hash: Hash
  private position = 0
  private settled = false

  constructor(store: BlobStore, digest: Digest, expectedSize: number, tmpPath: string, fh: FileHandle) {
    this.store = store
    this.digest = digest
    this.expectedSize = expectedSize
    this.tmpPath = tmpPath
    this.fh = fh
    this.hash = createHash(digest.algorithm)
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
    while (offset < chunk.byteLength) {
      const { bytesWritten } = await this.fh.write(chunk, offset, chunk.byteLength - offset, this.position)
      offset += bytesWritten
      this.position += bytesWritten
    }
  }

  /** Verifies size and digest, fsyncs, renames into the store. Throws (and discards) on mismatch. */
  async commit(): Promise<void> {
    if (this.position !== this.expectedSize) throw new SizeMismatchError(this.expectedSize, this.position)
    const actual = `${this.digest.algorithm}:${this.hash.digest('hex')}`
    if (actual !== this.digest.value) throw new DigestMismatchError(this.digest.value, actual)
    await this.fh.sync()
    this.settled = true
    await this.store.adopt(this.digest.value, this.expectedSize, this.tmpPath)
  }

  /** Deletes the temporary file (if not committed). The handle stays open for readers. */
  async discard(): Promise<void> {
    if (this.settled) return
    this.settled = true
    await unlink(this.tmpPath).catch(() => {})
  }
}
