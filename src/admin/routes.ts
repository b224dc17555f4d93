import { Readable } from 'node:stream'
import type { FastifyInstance, FastifyReply } from 'fastify'
import type { Logger } from 'pino'
import { parseDigest } from '../oci/digest.js'
import { OciError } from '../oci/errors.js'
import type { TargetRules } from '../registry/target.js'
import type { BlobStore } from '../store/blob-store.js'
import type { BlobService } from '../transfer/blob-service.js'
import type { ManifestService } from '../transfer/manifest-service.js'
import { checkPlatform, imageContents, parseImageRef } from './image.js'

export interface AdminOptions {
  store: BlobStore
  blobs: BlobService
  manifests: ManifestService
  rules: TargetRules
  logger: Logger
}

/** How often `prefetch` reports progress within one blob. */
const PROGRESS_INTERVAL_MS = 500

interface ImageBody {
  ref?: unknown
  platform?: unknown
}

/**
 * The admin API the CLI talks to (`shoal pin`, `unpin`, `prefetch`, `gc`, `verify`, `store ls`),
 * on the daemon's listen address. Errors go through the server's one error mapper.
 *
 *   GET    /api/v1/store                  usage, quota, watermarks, last start-up reconciliation
 *   GET    /api/v1/store/blobs            complete blobs and partial downloads
 *   POST   /api/v1/store/gc               evict down to the low watermark now
 *   POST   /api/v1/store/verify           re-hash every blob, drop the bad ones
 *   GET    /api/v1/pins                   pins
 *   POST   /api/v1/pins {ref, platform?}  pin an image (every platform, or one)
 *   DELETE /api/v1/pins?ref=&platform=    unpin
 *   POST   /api/v1/prefetch {ref, platform?}  pull an image into the store; NDJSON progress
 */
export async function adminRoutes(app: FastifyInstance, opts: AdminOptions): Promise<void> {
  const { store, blobs, manifests, rules } = opts
  const log = opts.logger.child({ component: 'admin' })

  app.get('/api/v1/store', async () => ({ usage: store.usage(), startup: store.report ?? null }))

  app.get('/api/v1/store/blobs', async () => ({
    blobs: [...store.list()].map((b) => ({ ...b, pinned: store.isPinned(b.digest), inUse: store.isInUse(b.digest) })),
    partials: store.listPartials(),
  }))

  app.post('/api/v1/store/gc', async () => {
    const result = await store.gc()
    log.info(result, 'gc requested')
    return { ...result, usage: store.usage() }
  })

  app.post('/api/v1/store/verify', async (_request, reply) => {
    const t0 = Date.now()
    const result = await store.verify({ signal: clientSignal(reply) })
    log.info({ checked: result.checked, bad: result.bad.length }, 'verify requested')
    return { ...result, ms: Date.now() - t0 }
  })

  app.get('/api/v1/pins', async () => ({ pins: store.listPins() }))

  app.post('/api/v1/pins', async (request, reply) => {
    const { ref, platform } = imageArgs(request.body)
    const image = parseImageRef(ref, rules)
    const contents = await imageContents(manifests, image, platform, clientSignal(reply), log)
    const record = {
      ref: image.text,
      platform,
      manifests: contents.manifests,
      blobs: contents.blobs.map((b) => b.digest),
      pinnedAt: Date.now(),
    }
    await store.pin(record)
    log.info({ ref: record.ref, platform, blobs: record.blobs.length }, 'pinned')
    return { ...record, held: record.blobs.filter((d) => store.stat(d) !== undefined).length }
  })

  app.delete('/api/v1/pins', async (request) => {
    const query = request.query as Record<string, string | undefined>
    const { ref, platform } = imageArgs(query)
    const removed = await store.unpin(parseImageRef(ref, rules).text, platform)
    log.info({ ref, platform, removed: removed.length }, 'unpinned')
    return { removed }
  })

  app.post('/api/v1/prefetch', async (request, reply) => {
    const { ref, platform } = imageArgs(request.body)
    const image = parseImageRef(ref, rules)
    const signal = clientSignal(reply)
    // Resolve before answering, so that a bad reference is a plain HTTP error.
    const contents = await imageContents(manifests, image, platform, signal, log)
    async function* events(): AsyncGenerator<string> {
      const t0 = Date.now()
      const total = contents.blobs.reduce((n, b) => n + Math.max(b.size, 0), 0)
      yield line({ event: 'resolved', ref: image.text, digest: contents.digest, manifests: contents.manifests.length, blobs: contents.blobs.length, bytes: total })
      let fetched = 0
      let cached = 0
      let i = 0
      for (const b of contents.blobs) {
        i++
        const digest = parseDigest(b.digest)
        if (store.stat(b.digest) !== undefined) {
          cached++
          yield line({ event: 'blob', n: i, of: contents.blobs.length, digest: b.digest, size: b.size, source: 'cache', cached: true })
          continue
        }
        try {
          const handle = await blobs.open({ registry: image.target.registry, name: image.target.name, digest }, signal)
          let bytes = 0
          let last = Date.now()
          if (handle.size > 0) {
            for await (const chunk of handle.read(0, handle.size - 1)) {
              bytes += (chunk as Buffer).length
              if (Date.now() - last >= PROGRESS_INTERVAL_MS) {
                last = Date.now()
                yield line({ event: 'progress', n: i, of: contents.blobs.length, digest: b.digest, bytes, size: handle.size })
              }
            }
          }
          fetched += bytes
          const kept = store.stat(b.digest) !== undefined
          if (kept) cached++
          yield line({ event: 'blob', n: i, of: contents.blobs.length, digest: b.digest, size: handle.size, source: handle.source, cached: kept })
        } catch (err) {
          if (signal.aborted) return
          yield line({ event: 'error', digest: b.digest, message: (err as Error).message })
          return
        }
      }
      yield line({ event: 'done', ref: image.text, blobs: contents.blobs.length, cached, fetchedBytes: fetched, ms: Date.now() - t0 })
    }
    return reply.header('content-type', 'application/x-ndjson').send(Readable.from(events()))
  })
}

/**
 * Aborts when the client hangs up before the answer is sent. (fastify's request.signal follows
 * the request stream, which closes as soon as a POST body has been read.)
 */
function clientSignal(reply: FastifyReply): AbortSignal {
  const controller = new AbortController()
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) controller.abort(new Error('client went away'))
  })
  return controller.signal
}

function imageArgs(body: unknown): { ref: string; platform: string | undefined } {
  const b = (body ?? {}) as ImageBody
  if (typeof b.ref !== 'string' || b.ref.trim() === '') throw new OciError(400, 'NAME_INVALID', 'an image reference (ref) is required')
  if (b.platform !== undefined && typeof b.platform !== 'string') throw new OciError(400, 'UNSUPPORTED', 'platform must be a string')
  return { ref: b.ref, platform: checkPlatform(b.platform) }
}

function line(event: Record<string, unknown>): string {
  return `${JSON.stringify(event)}\n`
}
