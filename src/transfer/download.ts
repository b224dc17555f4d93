import { Readable } from 'node:stream'
import type { Logger } from 'pino'
import type { BlobWriter } from '../store/blob-store.js'
import { StoreError } from '../store/errors.js'

const READ_CHUNK = 1024 * 1024

/**
 * One blob being fetched into the store, shared by every request that wants it (single flight).
 *
 * Readers stream the bytes already written, from the temporary file, while the rest arrives, so
 * the first byte reaches clients long before the blob is complete and memory stays flat. A
 * reader never gets the blob's last byte before the whole blob has matched its digest: if the
 * content turns out wrong, every client sees a truncated body (an error), never wrong bytes that
 * look complete.
 */
export class Download {
  readonly digest: string
  size = -1
  private writer: BlobWriter | undefined
  private state: 'starting' | 'running' | 'done' | 'failed' = 'starting'
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
    this.writer?.fh.close().catch((err) => this.log.warn({ err, digest: this.digest }, 'closing blob file failed'))
  }

  /** A stream of bytes [start, end] (inclusive), following the download as it progresses. */
  createReader(start: number, end: number): Readable {
    return new DownloadReader(this, start, end)
  }

  /** @internal */
  async readAt(buf: Buffer, length: number, position: number): Promise<number> {
    if (this.writer === undefined) throw new StoreError('NOT_STARTED', 'download has not started')
    const { bytesRead } = await this.writer.fh.read(buf, 0, length, position)
    return bytesRead
  }
}

class DownloadReader extends Readable {
  private readonly download: Download
  private position: number
  private readonly end: number
  private pumping = false

  constructor(download: Download, start: number, end: number) {
    super({ highWaterMark: READ_CHUNK })
    this.download = download
    this.position = start
    this.end = end
    download.acquire()
  }

  override _read(): void {
    if (!this.pumping) void this.pump()
  }

  private async pump(): Promise<void> {
    this.pumping = true
    try {
      while (!this.destroyed) {
        if (this.position > this.end) {
          this.push(null)
          return
        }
        const failed = this.download.failed
        if (failed) {
          this.destroy(failed)
          return
        }
        const limit = Math.min(this.download.readable(), this.end + 1)
        if (limit <= this.position) {
          await this.download.waitForProgress()
          continue
        }
        const length = Math.min(limit - this.position, READ_CHUNK)
        const buf = Buffer.allocUnsafe(length)
        const n = await this.download.readAt(buf, length, this.position)
        if (n === 0) throw new StoreError('SHORT_READ', 'blob file is shorter than written')
        this.position += n
        if (!this.push(n === length ? buf : buf.subarray(0, n))) return
      }
    } catch (err) {
      this.destroy(err as Error)
    } finally {
      this.pumping = false
    }
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.download.release()
    callback(err)
  }
}
