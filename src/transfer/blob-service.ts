import type { Readable } from 'node:stream'
import type { Logger } from 'pino'
import { blobUnknown } from '../oci/errors.js'
import type { BlobStore } from '../store/blob-store.js'
import { abortable } from '../util/abort.js'
import { Download } from './download.js'
import type { BlobLocator, BlobSource, ByteSource } from './types.js'

/** An open blob: its size, and a way to stream any byte range of it. */
export interface BlobHandle {
  readonly size: number
  readonly source: ByteSource
  /** bytes [start, end], inclusive */
  read(start: number, end: number): Readable
}

export interface BlobServiceEvents {
  /** bytes that arrived from a source and were written to a temporary file */
  onFetched?(source: string, bytes: number): void
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

  constructor(opts: BlobServiceOptions) {
    this.opts = opts
    this.log = opts.logger
  }

  inflight(): number {
    return this.downloads.size
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
      return { size: held.size, source: 'cache', read: (start, end) => store.createReadStream(digest, start, end) }
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
    return { size: dl.size, source: 'origin', read: (start, end) => download.createReader(start, end) }
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
        this.running.delete(running)
        dl.release()
      })
    this.running.add(running)
    return dl
  }

  private async run(locator: BlobLocator, dl: Download): Promise<void> {
    const { store, source, signal } = this.opts
    const first = await source.open(locator, { signal })
    const writer = await store.createWriter(locator.digest, first.size)
    try {
      dl.begin(writer)
      let body = first
      for (let resumes = 0; ; ) {
        try {
          let skip = writer.written - body.offset
          for await (const chunk of body.body as AsyncIterable<Buffer>) {
            let data = chunk
            if (skip > 0) {
              if (data.byteLength <= skip) {
                skip -= data.byteLength
                continue
              }
              data = data.subarray(skip)
              skip = 0
            }
            await writer.write(data)
            this.opts.events?.onFetched?.(source.kind, data.byteLength)
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
    } catch (err) {
      await writer.discard()
      throw err
    }
  }
}

/** A cut connection or a stalled body is worth resuming; wrong bytes or sizes are not. */
function isResumable(err: unknown): boolean {
  const name = (err as Error)?.name
  return name !== 'DigestMismatchError' && name !== 'SizeMismatchError' && name !== 'StoreError'
}
