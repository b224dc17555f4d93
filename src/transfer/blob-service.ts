import { createHash } from 'node:crypto'
import { type FileHandle, open } from 'node:fs/promises'
import { Readable } from 'node:stream'
import type { Logger } from 'pino'
import { blobUnknown } from '../oci/errors.js'
import type { BlobStore, BlobWriter } from '../store/blob-store.js'
import { DigestMismatchError, SizeMismatchError } from '../store/errors.js'
import { abortable } from '../util/abort.js'
import type { BlobSizes } from './blob-sizes.js'
import { ChunkBuffers } from './chunks/buffers.js'
import { planChunks } from './chunks/plan.js'
import { OriginTurns, RequestSlots, TableMismatchError } from './chunks/scheduler.js'
import { ChunkState } from './chunks/state.js'
import { createBlobReader, Download, type ReadTarget } from './download.js'
import { FANOUT_ORIGIN_INFLIGHT, MAX_HELD_BYTES, hotChunks, runSwarmDownload, type SwarmHooks, type SwarmPlan } from './swarm-download.js'
import { type BlobLocator, type BlobSource, type ByteSource, bytesFrom, type SourceBody } from './types.js'

/** An open blob: its size, and a way to stream any byte range of it. */
export interface BlobHandle {
  readonly size: number
  readonly source: ByteSource
  /**
   * Bytes [start, end] (inclusive). `pending`, when given, tells how many bytes written to the
   * destination the stream is piped to it still holds (lets the reader reuse its buffers).
   */
  read(start: number, end: number, pending?: () => number): Readable
}

export interface BlobServiceEvents {
  /** bytes that arrived from a source and were written to a temporary file */
  onFetched?(source: string, bytes: number, peer?: string): void
  onDownload?(event: 'started' | 'completed' | 'failed', digest: string): void
}

export interface BlobServiceOptions {
  store: BlobStore
  source: BlobSource
  logger: Logger
  /** how many times a body cut mid-way is resumed from where it stopped */
  resumeAttempts: number
  /** aborts every download at shutdown */
  signal: AbortSignal
  events?: BlobServiceEvents
  /** peers: where blobs are looked for before origin, and told about what this node holds */
  swarm?: SwarmHooks
  /** blob sizes named by the manifests served: a swarm download plans its chunks without asking origin */
  sizes?: BlobSizes
}

/**
 * Serves blobs from the store, and fetches the ones it lacks: one download per digest however
 * many requests want it. A download belongs to this service, not to the request that started it:
 * a client hanging up does not cancel the others' download (it carries on into the store).
 */
export class BlobService {
  private readonly downloads = new Map<string, Download>()
  private readonly running = new Set<Promise<void>>()
  private readonly opts: BlobServiceOptions
  private readonly log: Logger
  /** chunk buffers shared by swarm downloads, dropped when none runs */
  private readonly buffers: ChunkBuffers | undefined
  /** chunk requests to peers in flight, over all swarm downloads */
  private readonly slots: RequestSlots | undefined
  /** origin requests in flight, over all fan-out downloads */
  private readonly originTurns: OriginTurns | undefined

  constructor(opts: BlobServiceOptions) {
    this.opts = opts
    this.log = opts.logger
    if (opts.swarm !== undefined) {
      // Chunk buffers kept for reuse while downloads run: as many as can be live at once (one per
      // request in flight, the chunks held ahead of a download's prefix, and its last chunks kept
      // for peers and readers), so that none is taken fresh once the first are made (a fresh 1 MiB
      // buffer is 256 pages to fault in, and garbage for a full collection). 80 at the defaults,
      // 80 MiB, let go once no download runs.
      const { chunkSize, maxRequests } = opts.swarm
      this.buffers = new ChunkBuffers(chunkSize, maxRequests + Math.ceil(MAX_HELD_BYTES / chunkSize) + hotChunks(chunkSize))
      this.slots = new RequestSlots(maxRequests)
      this.originTurns = new OriginTurns(FANOUT_ORIGIN_INFLIGHT)
    }
  }

  inflight(): number {
    return this.downloads.size
  }

  /** An ongoing download (for peers asking for its verified chunks). */
  download(digest: string): Download | undefined {
    return this.downloads.get(digest)
  }

  /**
   * Starts fetching a blob no request here asked for (a peer wants this node to fetch it as an
   * origin fetcher). False when it is held, already coming, or `maxDownloads` are running.
   */
  prefetch(locator: BlobLocator, maxDownloads: number): boolean {
    const digest = locator.digest.value
    if (this.opts.store.stat(digest) !== undefined || this.downloads.has(digest) || this.downloads.size >= maxDownloads) return false
    this.start(locator)
    return true
  }

  /** Resolves once every download has ended (abort the service's signal first to hurry them). */
  async settled(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running])
  }

  /** The blob's size, from the store, an ongoing download, or origin (without downloading). */
  async stat(locator: BlobLocator, signal: AbortSignal): Promise<{ size: number; source: ByteSource }> {
    const held = this.opts.store.stat(locator.digest.value)
    if (held !== undefined) return { size: held.size, source: 'cache' }
    const dl = this.downloads.get(locator.digest.value)
    if (dl !== undefined) {
      await abortable(dl.started, signal)
      return { size: dl.size, source: 'origin' }
    }
    const size = await this.opts.source.stat(locator, { signal })
    if (size === undefined) throw blobUnknown(locator.registry, locator.name, locator.digest.value)
    return { size, source: 'origin' }
  }

  async open(locator: BlobLocator, signal: AbortSignal): Promise<BlobHandle> {
    const digest = locator.digest.value
    const store = this.opts.store
    const held = store.stat(digest)
    if (held !== undefined) {
      store.touch(digest)
      return { size: held.size, source: 'cache', read: (start, end, pending) => createBlobReader(new StoredBlob(store, digest, held.size), start, end, undefined, pending) }
    }
    let dl = this.downloads.get(digest)
    if (dl === undefined) {
      // The blob may have been committed between the two lookups.
      const committed = store.stat(digest)
      if (committed !== undefined) return this.open(locator, signal)
      dl = this.start(locator)
    }
    await abortable(dl.started, signal)
    const download = dl
    const size = dl.size
    const through = (start: number, end: number): Readable => this.streamThrough(locator, size, start, end)
    if (download.passthrough) return { size, source: 'origin', read: through }
    return { size, source: 'origin', read: (start, end, pending) => createBlobReader(download, start, end, through, pending) }
  }

  /**
   * Bytes [start, end] straight from the source, for a blob the store has no room for. A whole
   * blob is verified on the fly and its last byte held back until it matched its digest, as the
   * download path does; a range is relayed as the source sent it.
   */
  private streamThrough(locator: BlobLocator, size: number, start: number, end: number): Readable {
    const { source } = this.opts
    const controller = new AbortController()
    const signal = AbortSignal.any([this.opts.signal, controller.signal])
    const hash = start === 0 && end === size - 1 ? createHash(locator.digest.algorithm) : undefined
    async function* relay(): AsyncGenerator<Buffer> {
      const body = await source.open(locator, { signal, offset: start })
      try {
        let left = end - start + 1
        for await (let data of bytesFrom(body, start)) {
          if (data.byteLength > left) data = data.subarray(0, left)
          left -= data.byteLength
          hash?.update(data)
          if (hash !== undefined && left === 0) {
            // hold the last byte back until the whole blob matched
            if (data.byteLength > 1) yield data.subarray(0, data.byteLength - 1)
            const actual = `${locator.digest.algorithm}:${hash.digest('hex')}`
            if (actual !== locator.digest.value) throw new DigestMismatchError(locator.digest.value, actual)
            yield data.subarray(data.byteLength - 1)
          } else if (data.byteLength > 0) {
            yield data
          }
          if (left === 0) return
        }
        throw new SizeMismatchError(end - start + 1, end - start + 1 - left)
      } finally {
        body.body.destroy()
      }
    }
    const stream = Readable.from(relay(), { objectMode: false })
    stream.once('close', () => controller.abort())
    return stream
  }

  private start(locator: BlobLocator): Download {
    const digest = locator.digest.value
    const dl = new Download(digest, this.log)
    this.downloads.set(digest, dl)
    this.opts.events?.onDownload?.('started', digest)
    const running: Promise<void> = this.run(locator, dl)
      .then(
        () => {
          dl.finish()
          this.opts.events?.onDownload?.('completed', digest)
        },
        (err: Error) => {
          dl.fail(err)
          this.opts.events?.onDownload?.('failed', digest)
          this.log.warn({ err, digest, registry: locator.registry, name: locator.name }, 'blob download failed')
        },
      )
      .finally(() => {
        this.downloads.delete(digest)
        if (this.downloads.size === 0) this.buffers?.clear()
        this.running.delete(running)
        dl.release()
      })
    this.running.add(running)
    return dl
  }

  /**
   * How the swarm can serve a blob: the peers that hold it, and, unless one holds it whole, the
   * blob's origin fetchers (so that the fleet fetches it from origin about once). Undefined: go
   * to origin alone.
   */
  private async swarmPlan(locator: BlobLocator, swarm: SwarmHooks): Promise<SwarmPlan | undefined> {
    const { signal, source } = this.opts
    const digest = locator.digest.value
    const quiet = (what: string) => (err: Error) => {
      this.log.debug({ digest, err: err.message }, what)
      return undefined
    }
    const discovered = swarm.discover(digest, signal).catch(quiet('swarm discovery failed'))
    // Origin fetchers are looked for meanwhile; they are needed unless a peer holds the blob whole.
    const planned = discovered.then(async (found) => {
      if (found?.sources.some((s) => s.complete)) return undefined
      if (found !== undefined) return found.plan
      const size = this.opts.sizes?.get(digest) ?? (await source.stat(locator, { signal }).catch(quiet('origin stat failed')))
      return size === undefined ? undefined : planChunks(size, swarm.chunkSize)
    })
    const [found, plan, fanout] = await Promise.all([discovered, planned, swarm.fanout(locator, planned, signal).catch(quiet('choosing origin fetchers failed'))])
    if (plan === undefined || fanout === undefined) return found
    return {
      plan,
      table: found?.table ?? new Array(plan.count).fill(undefined),
      sources: found?.sources ?? [],
      stripes: fanout.stripes,
      answered: fanout.answered,
      settled: fanout.settled,
    }
  }

  private async run(locator: BlobLocator, dl: Download): Promise<void> {
    const { store, source, signal } = this.opts
    const digest = locator.digest.value
    // A partial download left by an earlier attempt or run: its bytes are re-hashed and served
    // at once, and only the rest is fetched.
    let writer: BlobWriter | undefined = await store.resumeWriter(locator.digest)
    if (writer !== undefined) {
      this.log.info({ digest, offset: writer.written, size: writer.expectedSize }, 'resuming partial download')
      dl.begin(writer)
      if (writer.written === writer.expectedSize) {
        try {
          await writer.commit()
        } catch (err) {
          await writer.abandon(false)
          throw err
        }
        return
      }
    }
    const swarm = this.opts.swarm
    if (writer === undefined && swarm?.joined()) {
      const plan = await this.swarmPlan(locator, swarm)
      if (plan !== undefined) {
        writer = await store.createWriter(locator.digest, plan.plan.size)
        dl.begin(writer)
        this.log.debug({ digest, peers: plan.sources.length, size: plan.plan.size, fanout: plan.stripes !== undefined }, 'fetching blob through the swarm')
        try {
          await runSwarmDownload({
            locator,
            plan,
            writer,
            download: dl,
            origin: source,
            swarm,
            signal,
            logger: this.log,
            onFetched: this.opts.events?.onFetched,
            buffers: this.buffers,
            slots: this.slots,
            originTurns: this.originTurns,
          })
          return
        } catch (err) {
          // A swarm that could not deliver does not fail the pull: origin carries on from the
          // in-order prefix, or from scratch when the chunk table proved false. Wrong bytes
          // (a digest mismatch) do fail it; the next request goes to origin.
          const falseTable = err instanceof TableMismatchError
          const resumable = isResumable(err) && !falseTable
          await writer.abandon(resumable)
          if (signal.aborted || !(resumable || falseTable)) throw err
          this.log.warn({ digest, err: (err as Error).message }, 'swarm download failed: continuing from origin')
          dl.chunks = undefined
          writer = resumable ? await store.resumeWriter(locator.digest) : undefined
          if (writer !== undefined) dl.begin(writer)
        }
      }
    }
    let first: SourceBody
    try {
      first = await source.open(locator, { signal, offset: writer?.written ?? 0 })
      if (writer !== undefined && first.size !== writer.expectedSize) throw new SizeMismatchError(writer.expectedSize, first.size)
    } catch (err) {
      await writer?.abandon(isResumable(err))
      throw err
    }
    if (writer === undefined) {
      try {
        writer = await store.createWriter(locator.digest, first.size)
      } catch (err) {
        first.body.destroy()
        if ((err as Error).name !== 'StoreFullError') throw err
        this.log.warn({ digest, size: first.size, reason: (err as Error).message }, 'store full: streaming blob through from origin without caching')
        dl.passThrough(first.size)
        return
      }
      dl.begin(writer)
    }
    let announced = false
    const chunks = swarm ? new ChunkState(planChunks(writer.expectedSize, swarm.chunkSize)) : undefined
    if (chunks !== undefined) {
      chunks.skipTo(writer.written)
      dl.chunks = chunks
    }
    try {
      let body = first
      for (let resumes = 0; ; ) {
        try {
          for await (const data of bytesFrom(body, writer.written)) {
            await writer.write(data)
            dl.received += data.byteLength
            this.opts.events?.onFetched?.(source.kind, data.byteLength)
            if (chunks !== undefined && chunks.feed(data).length > 0 && !announced) {
              announced = true
              swarm?.announce(digest)
            }
            dl.progress()
          }
          break
        } catch (err) {
          body.body.destroy()
          if (signal.aborted || !isResumable(err) || ++resumes > this.opts.resumeAttempts) throw err
          if (writer.written >= writer.expectedSize) throw err
          this.log.info({ digest: locator.digest.value, offset: writer.written, err }, 'resuming blob download')
          body = await source.open(locator, { signal, offset: writer.written })
          if (body.size !== writer.expectedSize || body.offset > writer.written) throw err
        }
      }
      await writer.commit()
      if (chunks?.complete) swarm?.completed(digest, chunks.hashes as string[])
    } catch (err) {
      if ((err as Error).name === 'StoreFullError') {
        this.log.warn({ digest, reason: (err as Error).message }, 'disk full: streaming the rest of the blob through from origin without caching')
      }
      await writer.abandon(isResumable(err))
      throw err
    }
  }
}

/** A cut connection or a stalled body is worth resuming; wrong bytes or sizes are not. */
function isResumable(err: unknown): boolean {
  const name = (err as Error)?.name
  return name !== 'DigestMismatchError' && name !== 'SizeMismatchError' && name !== 'StoreError' && name !== 'StoreFullError'
}

/** A stored blob as a reader's target: complete, read from its file (opened at the first read, never evicted while read). */
class StoredBlob implements ReadTarget {
  readonly failed = undefined
  private readonly store: BlobStore
  private readonly digest: string
  private readonly size: number
  private file: Promise<FileHandle> | undefined
  private refs = 0

  constructor(store: BlobStore, digest: string, size: number) {
    this.store = store
    this.digest = digest
    this.size = size
  }

  readable(): number {
    return this.size
  }

  async waitForProgress(): Promise<void> {}

  async readAt(buf: Buffer, length: number, position: number): Promise<number> {
    this.file ??= open(this.store.blobPath(this.digest), 'r')
    const { bytesRead } = await (await this.file).read(buf, 0, length, position)
    return bytesRead
  }

  acquire(): void {
    if (this.refs++ === 0) this.store.acquire(this.digest)
  }

  release(): void {
    if (--this.refs > 0) return
    this.file?.then((fh) => fh.close()).catch(() => {})
    this.file = undefined
    this.store.release(this.digest)
  }
}
