import type { Logger } from 'pino'
import { MAX_EXCHANGED_PEERS, MAX_NEAR_PEERS, isSmallChunk } from '../peer/protocol.js'
import type { BlobInfo, ChunkProvider, ChunkRead } from '../peer/types.js'
import type { BlobStore } from '../store/blob-store.js'
import { ChunkBuffers } from '../transfer/chunks/buffers.js'
import { type ChunkPlan, chunkBounds, chunkHash, planChunks } from '../transfer/chunks/plan.js'
import { ChunkState } from '../transfer/chunks/state.js'
import type { Download } from '../transfer/download.js'
import { abortable } from '../util/abort.js'

/** an asker is named to others for this long after it last asked */
const EXCHANGE_WINDOW_MS = 60_000
/** blobs whose askers are remembered (the oldest is forgotten first) */
const MAX_EXCHANGE_DIGESTS = 256
/**
 * The upload buffers are let go after this long with no chunk read (they are as many as the
 * server's upload slots: 4 MiB at the defaults).
 */
const UPLOAD_BUFFERS_IDLE_MS = 30_000
/**
 * While more than LONG_POLL_BATCH_WAITING long polls wait on a blob, each is answered once this
 * node holds LONG_POLL_NEW_CHUNKS chunks more than its asker knows of (the first chunk, and a
 * blob's last ones, at once), so that an answer tells of two chunks rather than one. In a
 * 16-node fan-out a node answered 5.7 polls for every chunk it received; with 2, 38% fewer
 * answers, each at most one chunk later. With few askers the answers cost little and the
 * latency counts more: a 4-node fan-out read 1.26× T_min with every poll waiting for two chunks,
 * against 1.19× without.
 */
const LONG_POLL_NEW_CHUNKS = 2
const LONG_POLL_BATCH_WAITING = 4

export interface StoreChunkProviderOptions {
  store: BlobStore
  /** the download in progress for a digest, if any (its verified chunks are served too) */
  download(digest: string): Download | undefined
  want?(digest: string, source: string, peerId: string): void
  /** up to `count` peer ids this node knows nearest the blob's DHT key, its own included, nearest first (no network) */
  near?(digest: string, count: number): Promise<string[]>
  chunkSize: number
  /**
   * Chunk buffers kept for uploads: as many as the server uploads at once. A chunk goes out from
   * memory read whole into a reused buffer: a fresh buffer per read lived as long as the upload,
   * outlived the young generation, and its memory was only freed by full garbage collections
   * (tens per gigabyte served, measured). With 4 kept and up to 16 uploads at once, a busy
   * seeder took a fresh buffer for every upload past the fourth.
   */
  uploadBuffers: number
  logger: Logger
}

/**
 * What this node hands out to peers: every chunk of the blobs it holds complete, and the
 * verified chunks of the blobs it is still downloading (in-flight sharing).
 *
 * A complete blob's chunk table comes from the index (recorded when the download completed);
 * when it is missing (the blob came in before the swarm was on, or a resumed download), the file
 * is hashed once, chunk by chunk, and the table recorded. Either way it is computed from bytes
 * that matched the blob's digest.
 */
export class StoreChunkProvider implements ChunkProvider {
  private readonly opts: StoreChunkProviderOptions
  private readonly computing = new Map<string, Promise<string[]>>()
  /** digest → peer id → when it last asked about the blob (peer exchange) */
  private readonly askers = new Map<string, Map<string, number>>()
  /** digest → long polls waiting on it */
  private readonly waiting = new Map<string, number>()

  private readonly buffers: ChunkBuffers
  private idleTimer: NodeJS.Timeout | undefined

  constructor(opts: StoreChunkProviderOptions) {
    this.opts = opts
    this.buffers = new ChunkBuffers(opts.chunkSize, opts.uploadBuffers)
  }

  async info(digest: string, wait?: { held: number; signal: AbortSignal }, asker?: string): Promise<BlobInfo | undefined> {
    const { store, chunkSize } = this.opts
    if (asker !== undefined) this.asked(digest, asker)
    if (wait !== undefined) await this.moreThan(digest, wait.held, wait.signal)
    const held = store.stat(digest)
    if (held !== undefined) {
      const table = await this.table(digest, held.size)
      if (table === undefined) return undefined
      return this.withAskers({ size: held.size, chunkSize, table, have: table.map(() => true) }, digest, asker)
    }
    // a download that has begun answers even before its first chunk: peers waiting on it as an
    // origin fetcher see that it moves
    const download = this.inflight(digest)
    if (download?.chunks === undefined) return undefined
    return this.withAskers({ ...download.chunks.info(), received: download.received }, digest, asker)
  }

  /**
   * What a node choosing its origin fetchers learns from one it asks: its holdings, and the
   * nodes it knows nearest the blob's key (it is near the key, so its routing table knows them
   * best). Only these asks pay for the list, a few per blob and node; long polls do not.
   */
  async wantInfo(digest: string, asker: string): Promise<BlobInfo | undefined> {
    const [info, near] = await Promise.all([
      this.info(digest, undefined, asker),
      this.opts.near?.(digest, MAX_NEAR_PEERS).catch((err: Error) => {
        this.opts.logger.debug({ digest, err: err.message }, 'cannot name the peers near a blob')
        return undefined
      }),
    ])
    if (near === undefined || near.length === 0) return info
    // not begun here (the size is not known yet): no chunks, so that the asker still hears `near`
    return { ...(info ?? { size: 0, chunkSize: this.opts.chunkSize, have: [] }), near }
  }

  /**
   * Peer exchange: whoever asks about a blob is fetching it, so it is worth naming to the next
   * askers, who learn of each other through the nodes they all ask (the origin fetchers first)
   * instead of through DHT lookups. A name is only a hint: an asker checks what that peer holds,
   * and every chunk it takes is verified.
   */
  private asked(digest: string, peerId: string): void {
    let seen = this.askers.get(digest)
    if (seen === undefined) {
      if (this.askers.size >= MAX_EXCHANGE_DIGESTS) this.askers.delete(this.askers.keys().next().value as string)
      seen = new Map()
      this.askers.set(digest, seen)
    }
    seen.delete(peerId) // most recent last
    seen.set(peerId, Date.now())
    if (seen.size > MAX_EXCHANGED_PEERS * 2) seen.delete(seen.keys().next().value as string)
  }

  /** `info` naming the peers that asked about the blob lately, most recent first, but `asker` */
  private withAskers(info: BlobInfo, digest: string, asker: string | undefined): BlobInfo {
    const seen = this.askers.get(digest)
    if (seen === undefined) return info
    // (oldest first in the map; walked without a copy of it: this runs for every answer)
    const since = Date.now() - EXCHANGE_WINDOW_MS
    const recent: string[] = []
    seen.forEach((at, id) => {
      if (at >= since && id !== asker) recent.push(id)
    })
    if (recent.length > 0) info.peers = recent.reverse().slice(0, MAX_EXCHANGED_PEERS)
    return info
  }

  layout(digest: string): { size: number; chunkSize: number } | undefined {
    const held = this.opts.store.stat(digest)
    if (held !== undefined) return { size: held.size, chunkSize: this.opts.chunkSize }
    const plan = this.inflight(digest)?.chunks?.plan
    return plan === undefined ? undefined : { size: plan.size, chunkSize: plan.chunkSize }
  }

  async read(digest: string, index: number, signal: AbortSignal): Promise<ChunkRead | undefined> {
    const source = this.chunkSource(digest, index)
    if (source === undefined || index >= source.plan.count) return undefined
    const { start, end } = chunkBounds(source.plan, index)
    // one timer, pushed back by every read (no timer per chunk)
    this.idleTimer ??= setTimeout(() => this.buffers.clear(), UPLOAD_BUFFERS_IDLE_MS).unref()
    this.idleTimer.refresh()
    // a small chunk takes no upload slot, so there may be many at once: a buffer of its size each,
    // not a pooled chunk-sized one
    const small = isSmallChunk(end - start, source.plan.chunkSize)
    const bytes = small ? Buffer.allocUnsafe(end - start) : this.buffers.take(end - start)
    const release = (): void => {
      if (!small) this.buffers.give(bytes)
    }
    try {
      await source.readInto(start, bytes)
      signal.throwIfAborted()
    } catch (err) {
      release()
      // evicted since: not held any more
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
    return { bytes, release }
  }

  /** Where chunk `index` of a blob is read from: the stored blob, or a verified chunk of its download in flight. */
  private chunkSource(digest: string, index: number): { plan: ChunkPlan; readInto(start: number, into: Uint8Array): Promise<void> } | undefined {
    const { store, chunkSize } = this.opts
    const held = store.stat(digest)
    if (held !== undefined) return { plan: planChunks(held.size, chunkSize), readInto: (start, into) => store.readInto(digest, start, into) }
    const download = this.inflight(digest)
    const chunks = download?.chunks
    if (download === undefined || chunks === undefined || chunks.have[index] !== true) return undefined
    return { plan: chunks.plan, readInto: (start, into) => download.readInto(start, into) }
  }

  /**
   * Resolves once enough chunks of the blob are held beyond the `count` the asker knows of (one;
   * LONG_POLL_NEW_CHUNKS, or all the rest, while many polls wait on the blob and the asker knows
   * of some), or all are, or none will come, or `signal` ends.
   */
  private async moreThan(digest: string, count: number, signal: AbortSignal): Promise<void> {
    this.waiting.set(digest, (this.waiting.get(digest) ?? 0) + 1)
    try {
      while (!signal.aborted && this.opts.store.stat(digest) === undefined) {
        const download = this.inflight(digest)
        const chunks = download?.chunks
        const batch = count > 0 && (this.waiting.get(digest) ?? 0) > LONG_POLL_BATCH_WAITING
        const enough = batch ? Math.max(1, Math.min(LONG_POLL_NEW_CHUNKS, (chunks?.plan.count ?? 0) - count)) : 1
        if (download === undefined || download.complete || (chunks !== undefined && chunks.held - count >= enough)) return
        await abortable(download.waitForProgress(), signal).catch(() => {})
      }
    } finally {
      const left = (this.waiting.get(digest) ?? 1) - 1
      if (left > 0) this.waiting.set(digest, left)
      else this.waiting.delete(digest)
    }
  }

  want(digest: string, source: string, peerId: string): void {
    this.opts.want?.(digest, source, peerId)
  }

  private inflight(digest: string): Download | undefined {
    const download = this.opts.download(digest)
    if (download === undefined || download.failed !== undefined || download.chunks?.plan.chunkSize !== this.opts.chunkSize) return undefined
    return download
  }

  /** The chunk table of a held blob; undefined if the blob went away meanwhile. */
  private async table(digest: string, size: number): Promise<string[] | undefined> {
    const { store, chunkSize } = this.opts
    const recorded = await store.getChunkTable(digest).catch(() => undefined)
    if (recorded !== undefined && recorded.chunkSize === chunkSize) return [...recorded.hashes]
    let pending = this.computing.get(digest)
    if (pending === undefined) {
      pending = this.compute(digest, size).finally(() => this.computing.delete(digest))
      this.computing.set(digest, pending)
    }
    try {
      return await pending
    } catch (err) {
      this.opts.logger.debug({ digest, err: (err as Error).message }, 'cannot compute chunk table')
      return undefined
    }
  }

  private async compute(digest: string, size: number): Promise<string[]> {
    const { store, chunkSize } = this.opts
    const chunks = new ChunkState(planChunks(size, chunkSize))
    if (size === 0) chunks.mark(0, chunkHash(new Uint8Array(0))) // one empty chunk
    else for await (const data of store.createReadStream(digest, 0, size - 1) as AsyncIterable<Buffer>) chunks.feed(data)
    if (!chunks.complete) throw new Error(`blob file of ${digest} is shorter than its size`)
    const hashes = chunks.hashes as string[]
    await store.putChunkTable(digest, { chunkSize, hashes })
    return hashes
  }
}
