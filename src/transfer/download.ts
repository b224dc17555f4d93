import { Readable } from 'node:stream'
import type { Logger } from 'pino'
import { type BlobWriter, readFully } from '../store/blob-store.js'
import { StoreError } from '../store/errors.js'
import type { ChunkMemory } from './chunks/hot.js'
import type { ChunkState } from './chunks/state.js'

const READ_CHUNK = 1024 * 1024
/** read buffers a reader keeps for reuse */
const POOLED_READS = 4

/** Streams bytes [start, end] of the blob straight from a source, bypassing the store. */
export type StreamThrough = (start: number, end: number) => Readable

/** What a reader follows: a download's partial file (it grows), or a stored blob's file. */
export interface ReadTarget {
  /** set once the target can give no more bytes */
  readonly failed: Error | undefined
  /** bytes a reader may take */
  readable(): number
  /** resolves once readable() grew or the target ended */
  waitForProgress(): Promise<void>
  readAt(buf: Buffer, length: number, position: number): Promise<number>
  /** a reader holds the target open from acquire() to release() */
  acquire(): void
  release(): void
}

/**
 * A stream of bytes [start, end] (inclusive) of `target`. When the target fails because the disk
 * filled up, the reader carries on from `fallback`. `pending` (optional) tells how many of the
 * bytes written to the stream's destination it still holds (not yet handed to the kernel): the
 * reader then reuses its buffers (see BlobReader).
 */
export function createBlobReader(target: ReadTarget, start: number, end: number, fallback?: StreamThrough, pending?: () => number): Readable {
  return new BlobReader(target, start, end, fallback, pending)
}

/**
 * One blob being fetched into the store, shared by every request that wants it (single flight).
 *
 * Readers stream the bytes already written, from the temporary file, while the rest arrives, so
 * the first byte reaches clients long before the blob is complete and memory stays flat. A
 * reader never gets the blob's last byte before the whole blob has matched its digest: if the
 * content turns out wrong, every client sees a truncated body (an error), never wrong bytes that
 * look complete.
 */
export class Download implements ReadTarget {
  readonly digest: string
  size = -1
  private writer: BlobWriter | undefined
  private state: 'starting' | 'running' | 'done' | 'failed' = 'starting'
  /** the store had no room: readers stream from the source instead (see BlobService) */
  passthrough = false
  /** chunks held verified so far, when the swarm is on: what peers may take from this download */
  chunks: ChunkState | undefined
  /**
   * bytes received from origin, partial chunks included: tells the peers waiting on this node as
   * an origin fetcher that its share moves (bytes from peers say nothing about that)
   */
  received = 0
  /** set while the download holds verified chunks in memory (a swarm download) */
  memory: ChunkMemory | undefined
  /** reads served from memory and from the file */
  readonly reads = { memory: 0, file: 0 }
  private error: Error | undefined
  private waiters: (() => void)[] = []
  /** the download itself holds one reference; each reader holds one */
  private refs = 1
  private readonly log: Logger
  readonly started: Promise<void>
  private resolveStarted!: () => void
  private rejectStarted!: (err: Error) => void

  constructor(digest: string, log: Logger) {
    this.digest = digest
    this.log = log
    this.started = new Promise<void>((resolve, reject) => {
      this.resolveStarted = resolve
      this.rejectStarted = reject
    })
    this.started.catch(() => {})
  }

  get written(): number {
    return this.writer?.written ?? 0
  }

  get failed(): Error | undefined {
    return this.state === 'failed' ? this.error : undefined
  }

  get complete(): boolean {
    return this.state === 'done'
  }

  /** Called once the source answered: the size is known and bytes may follow. */
  begin(writer: BlobWriter): void {
    this.writer = writer
    this.size = writer.expectedSize
    this.state = 'running'
    this.resolveStarted()
  }

  /** The store cannot hold the blob: started, but with no file; readers bypass this download. */
  passThrough(size: number): void {
    this.size = size
    this.passthrough = true
    this.resolveStarted()
  }

  progress(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }

  finish(): void {
    this.state = 'done'
    this.progress()
  }

  fail(err: Error): void {
    this.state = 'failed'
    this.error = err
    this.rejectStarted(err)
    this.progress()
  }

  /** Bytes a reader may take: all when verified, else all written but the last byte. */
  readable(): number {
    if (this.state === 'done') return this.size
    return Math.min(this.written, this.size - 1)
  }

  waitForProgress(): Promise<void> {
    if (this.state === 'done' || this.state === 'failed') return Promise.resolve()
    return new Promise((resolve) => this.waiters.push(resolve))
  }

  acquire(): void {
    this.refs++
  }

  release(): void {
    if (--this.refs > 0) return
    this.writer?.close().catch((err) => this.log.warn({ err, digest: this.digest }, 'closing blob file failed'))
  }

  /**
   * Fills `into` with the partial file's bytes from `start`, past the in-order prefix too: for a
   * verified chunk a peer asks for (the caller checks `chunks` first).
   */
  async readInto(start: number, into: Uint8Array): Promise<void> {
    if (this.writer === undefined || this.state === 'failed') throw new StoreError('NOT_STARTED', 'download is not running')
    const copied = this.fromMemory(into, into.byteLength, start)
    if (copied === into.byteLength) return
    this.acquire()
    try {
      this.reads.file++
      await readFully(this.writer.fh, into.subarray(copied), start + copied)
    } finally {
      this.release()
    }
  }

  async readAt(buf: Buffer, length: number, position: number): Promise<number> {
    if (this.writer === undefined) throw new StoreError('NOT_STARTED', 'download has not started')
    const copied = this.fromMemory(buf, length, position)
    if (copied > 0) return copied
    this.reads.file++
    const { bytesRead } = await this.writer.fh.read(buf, 0, length, position)
    return bytesRead
  }

  /** copies up to `length` bytes from `position` out of a chunk held in memory into `into`: how many (0: that chunk is not in memory) */
  private fromMemory(into: Uint8Array, length: number, position: number): number {
    const memory = this.memory
    if (memory === undefined) return 0
    const index = Math.floor(position / memory.chunkSize)
    const bytes = memory.get(index)
    if (bytes === undefined) return 0
    const offset = position - index * memory.chunkSize
    const n = Math.min(length, bytes.byteLength - offset)
    if (n <= 0) return 0
    into.set(bytes.subarray(offset, offset + n))
    this.reads.memory++
    return n
  }
}

/**
 * Reads a blob's file, following a download as it extends it. Its read buffers are reused once
 * nothing references their bytes any more: given how many bytes its destination still holds
 * (`pending`), every byte pushed before the last `pushed - queued here - pending` ones has been
 * handed to the kernel. A fresh buffer per read lived as long as the client took to drain it,
 * was often promoted out of the young generation, and its memory was then only freed by full
 * garbage collections.
 */
class BlobReader extends Readable {
  private readonly target: ReadTarget
  private position: number
  private readonly end: number
  private pumping = false
  private readonly fallback: StreamThrough | undefined
  private tail: Readable | undefined
  private readonly pending: (() => number) | undefined
  /** bytes pushed so far */
  private pushedBytes = 0
  /** buffers pushed whose bytes may still be read downstream, oldest first, with the stream offset their bytes end at */
  private readonly inFlight: { buf: Buffer; end: number }[] = []
  private readonly free: Buffer[] = []

  constructor(target: ReadTarget, start: number, end: number, fallback?: StreamThrough, pending?: () => number) {
    super({ highWaterMark: READ_CHUNK })
    this.target = target
    this.position = start
    this.end = end
    this.fallback = fallback
    this.pending = pending
    target.acquire()
  }

  /** a buffer for a read of `length` bytes: a reused one when the oldest pushed one is known to be gone */
  private buffer(length: number): Buffer {
    if (this.pending !== undefined && this.inFlight.length > 0) {
      const gone = this.pushedBytes - this.readableLength - this.pending()
      while (this.inFlight.length > 0 && (this.inFlight[0] as { end: number }).end <= gone) {
        const { buf } = this.inFlight.shift() as { buf: Buffer }
        if (this.free.length < POOLED_READS) this.free.push(buf)
      }
    }
    // a short read (a small blob, a small range) takes a small buffer, never reused
    return this.free.pop() ?? (length < READ_CHUNK ? Buffer.allocUnsafe(length) : Buffer.allocUnsafeSlow(READ_CHUNK))
  }

  override _read(): void {
    if (this.tail !== undefined) this.tail.resume()
    else if (!this.pumping) void this.pump()
  }

  /** The rest of the range from the fallback source, with backpressure. */
  private follow(fallback: StreamThrough): void {
    const tail = fallback(this.position, this.end)
    this.tail = tail
    tail.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) tail.pause()
    })
    tail.once('end', () => this.push(null))
    tail.once('error', (err) => this.destroy(err))
  }

  private async pump(): Promise<void> {
    this.pumping = true
    try {
      while (!this.destroyed) {
        if (this.position > this.end) {
          this.push(null)
          return
        }
        const failed = this.target.failed
        if (failed) {
          if (failed.name === 'StoreFullError' && this.fallback !== undefined) this.follow(this.fallback)
          else this.destroy(failed)
          return
        }
        const limit = Math.min(this.target.readable(), this.end + 1)
        if (limit <= this.position) {
          await this.target.waitForProgress()
          continue
        }
        const length = Math.min(limit - this.position, READ_CHUNK)
        const buf = this.buffer(length)
        const n = await this.target.readAt(buf, length, this.position)
        if (n === 0) throw new StoreError('SHORT_READ', 'blob file is shorter than written')
        this.position += n
        this.pushedBytes += n
        // only reused when the destination can tell that its bytes are gone (see buffer())
        if (this.pending !== undefined && buf.length === READ_CHUNK && this.inFlight.length < POOLED_READS * 2) this.inFlight.push({ buf, end: this.pushedBytes })
        if (!this.push(buf.subarray(0, n))) return
      }
    } catch (err) {
      this.destroy(err as Error)
    } finally {
      this.pumping = false
    }
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.tail?.destroy()
    this.target.release()
    callback(err)
  }
}
