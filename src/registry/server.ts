import Fastify, { type FastifyReply, type FastifyRequest, LogController } from 'fastify'
import type { Logger } from 'pino'
import { type AdminOptions, adminRoutes } from '../admin/routes.js'
import { looksLikeDigest, parseDigest } from '../oci/digest.js'
import { OciError, ociErrorBody } from '../oci/errors.js'
import { assertTag } from '../oci/reference.js'
import { parseV2Path } from '../oci/path.js'
import type { Metrics } from '../metrics/index.js'
import type { OriginClient } from '../origin/client.js'
import type { BlobService } from '../transfer/blob-service.js'
import type { ManifestService } from '../transfer/manifest-service.js'
import type { ByteSource } from '../transfer/types.js'
import { toHttpError } from './errors.js'
import { parseRange } from './range.js'
import { resolveTarget, type Target, type TargetRules } from './target.js'

export interface RegistryServerOptions {
  logger: Logger
  metrics: Metrics
  blobs: BlobService
  manifests: ManifestService
  origin: OriginClient
  rules: TargetRules
  /** the document served at /api/v1/status */
  status: () => Record<string, unknown>
  /** /readyz: 200 when `ready`, with the whole answer as its JSON body */
  ready: () => { ready: boolean; [key: string]: unknown }
  /** the admin API (/api/v1/store, /api/v1/pins, /api/v1/prefetch) */
  admin?: AdminOptions
}

/** Per-request facts for the access log line. */
interface RequestFacts {
  start: bigint
  kind: string
  source: ByteSource
  registry: string | undefined
  bytes: number
}

declare module 'fastify' {
  interface FastifyRequest {
    facts: RequestFacts
  }
}

const API_VERSION_HEADER = { 'docker-distribution-api-version': 'registry/2.0' }
const PASSTHROUGH_HEADERS = ['content-type', 'link', 'docker-content-digest', 'oci-filters-applied'] as const

/** The HTTP surface: the /v2 pull API, health, readiness, status and metrics. */
export function buildServer(opts: RegistryServerOptions) {
  const { logger, metrics } = opts
  const log = logger.child({ component: 'http' })
  const app = Fastify({
    loggerInstance: logger,
    // (request lines are logged by the hooks below, once each with what was served)
    logController: new LogController({ disableRequestLogging: true }),
    routerOptions: { maxParamLength: 4096 },
    bodyLimit: 64 * 1024,
    exposeHeadRoutes: false,
    return503OnClosing: true,
  })

  app.decorateRequest('facts', null as unknown as RequestFacts)
  app.addHook('onRequest', (request, reply, done) => {
    const facts: RequestFacts = { start: process.hrtime.bigint(), kind: 'other', source: 'none', registry: undefined, bytes: 0 }
    request.facts = facts
    reply.raw.once('close', () => logRequest(request, reply, facts))
    done()
  })

  function logRequest(request: FastifyRequest, reply: FastifyReply, facts: RequestFacts): void {
    const seconds = Number(process.hrtime.bigint() - facts.start) / 1e9
    const res = reply.raw
    const status = res.statusCode
    const complete = res.writableFinished
    const path = request.raw.url ?? ''
    if (facts.kind !== 'other') {
      metrics.httpRequests.inc({ kind: facts.kind, method: request.method, status })
      metrics.httpDuration.observe({ kind: facts.kind }, seconds)
      if (complete && facts.bytes > 0) metrics.bytesServed.inc({ source: facts.source }, facts.bytes)
    }
    log.info(
      {
        method: request.method,
        path: path.length > 512 ? `${path.slice(0, 512)}…` : path,
        status,
        bytes: complete ? facts.bytes : undefined,
        aborted: complete ? undefined : true,
        ms: Math.round(seconds * 1e4) / 10,
        source: facts.source,
        registry: facts.registry,
      },
      'request',
    )
  }

  app.setErrorHandler((err, request, reply) => {
    const e = toHttpError(err)
    if (e.serverSide) log.warn({ err, path: request.raw.url }, 'request failed')
    if (reply.raw.headersSent) {
      reply.raw.destroy()
      return
    }
    void reply
      .code(e.status)
      .headers({ ...API_VERSION_HEADER, ...e.headers, 'content-type': 'application/json' })
      .send(ociErrorBody(e.code, e.message, e.detail))
  })

  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).header('content-type', 'application/json').send(ociErrorBody('UNSUPPORTED', `no such endpoint: ${request.method} ${request.url.slice(0, 200)}`))
  })

  app.get('/healthz', async () => 'ok\n')
  app.get('/readyz', async (_request, reply) => {
    const answer = opts.ready()
    return reply.code(answer.ready ? 200 : 503).send(answer)
  })
  app.get('/api/v1/status', async () => opts.status())
  if (opts.admin !== undefined) void app.register(adminRoutes, opts.admin)
  app.get('/metrics', async (_request, reply) => {
    const text = await metrics.registry.metrics()
    return reply.header('content-type', metrics.registry.contentType).send(text)
  })

  const v2 = (request: FastifyRequest, reply: FastifyReply): Promise<unknown> => handleV2(opts, request, reply)
  app.route({ method: ['GET', 'HEAD'], url: '/v2', handler: v2 })
  app.route({ method: ['GET', 'HEAD'], url: '/v2/*', handler: v2 })
  app.route({
    method: ['POST', 'PUT', 'PATCH', 'DELETE'],
    url: '/v2/*',
    handler: async () => {
      throw new OciError(405, 'UNSUPPORTED', 'this is a pull-only mirror')
    },
  })
  return app
}

async function handleV2(opts: RegistryServerOptions, request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
  const rawUrl = request.raw.url ?? '/'
  const q = rawUrl.indexOf('?')
  const pathname = q === -1 ? rawUrl : rawUrl.slice(0, q)
  const query = q === -1 ? '' : rawUrl.slice(q + 1)
  const route = parseV2Path(pathname)
  const facts = request.facts
  facts.kind = route.kind
  void reply.headers(API_VERSION_HEADER)
  if (route.kind === 'base') return reply.header('content-type', 'application/json').send('{}')

  const ns = new URLSearchParams(query).get('ns') ?? undefined
  const target = resolveTarget(route.segments, ns, opts.rules)
  facts.registry = target.registry
  if (target.viaNs) void reply.header('oci-namespace', target.registry)
  const head = request.method === 'HEAD'

  switch (route.kind) {
    case 'manifest':
      return serveManifest(opts, request, reply, target, route.reference, head)
    case 'blob':
      return serveBlob(opts, request, reply, target, route.digest, head)
    case 'tags':
      return passThrough(opts, request, reply, target, 'tags/list', stripNs(query))
    case 'referrers':
      parseDigest(route.digest)
      return passThrough(opts, request, reply, target, `referrers/${route.digest}`, stripNs(query))
  }
}

async function serveManifest(
  opts: RegistryServerOptions,
  request: FastifyRequest,
  reply: FastifyReply,
  target: Target,
  reference: string,
  head: boolean,
): Promise<unknown> {
  if (looksLikeDigest(reference)) parseDigest(reference)
  else assertTag(reference)
  const accept = request.headers.accept
  const m = await opts.manifests.resolve(target, reference, accept, head ? 'HEAD' : 'GET', request.signal)
  request.facts.source = m.source
  void reply.headers({
    'content-type': m.mediaType,
    'docker-content-digest': m.digest,
    'content-length': String(m.size),
    etag: `"${m.digest}"`,
  })
  if (head || m.bytes === undefined) return reply.send()
  request.facts.bytes = m.bytes.length
  return reply.send(m.bytes)
}

async function serveBlob(
  opts: RegistryServerOptions,
  request: FastifyRequest,
  reply: FastifyReply,
  target: Target,
  digestText: string,
  head: boolean,
): Promise<unknown> {
  const digest = parseDigest(digestText)
  const locator = { registry: target.registry, name: target.name, digest }
  void reply.headers({
    'docker-content-digest': digest.value,
    'accept-ranges': 'bytes',
    'content-type': 'application/octet-stream',
    etag: `"${digest.value}"`,
    'cache-control': 'max-age=31536000',
  })
  if (head) {
    const { size, source } = await opts.blobs.stat(locator, request.signal)
    request.facts.source = source
    return reply.header('content-length', String(size)).send('')
  }
  const blob = await opts.blobs.open(locator, request.signal)
  request.facts.source = blob.source
  const range = parseRange(request.headers.range, blob.size)
  if (range === 'unsatisfiable') {
    return reply.code(416).headers({ 'content-range': `bytes */${blob.size}`, 'content-length': '0' }).send('')
  }
  const start = range?.start ?? 0
  const end = range?.end ?? blob.size - 1
  const length = end - start + 1
  request.facts.bytes = length
  if (range !== undefined) void reply.code(206).header('content-range', `bytes ${start}-${end}/${blob.size}`)
  void reply.header('content-length', String(length))
  if (length === 0) return reply.send()
  // bytes the response and its socket hold, not yet handed to the kernel (headers included: errs
  // on the safe side)
  const res = reply.raw
  return reply.send(blob.read(start, end, () => res.writableLength))
}

async function passThrough(
  opts: RegistryServerOptions,
  request: FastifyRequest,
  reply: FastifyReply,
  target: Target,
  path: string,
  query: string,
): Promise<unknown> {
  const headers: Record<string, string> = {}
  if (request.headers.accept) headers.accept = request.headers.accept
  const res = await opts.origin.request({
    registry: target.registry,
    name: target.name,
    path,
    query,
    method: request.method === 'HEAD' ? 'HEAD' : 'GET',
    headers,
    signal: request.signal,
  })
  request.facts.source = 'origin'
  void reply.code(res.status)
  for (const name of PASSTHROUGH_HEADERS) {
    const value = res.headers[name]
    if (value !== undefined) void reply.header(name, value)
  }
  return reply.send(res.body)
}

function stripNs(query: string): string {
  if (query === '') return ''
  const params = new URLSearchParams(query)
  params.delete('ns')
  return params.toString()
}

