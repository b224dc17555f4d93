import { setTimeout as sleep } from 'node:timers/promises'
import type { Readable } from 'node:stream'
import { Agent, type Dispatcher, interceptors } from 'undici'
import type { Logger } from 'pino'
import type { Config } from '../config/schema.js'
import { RegistryAuth } from './auth.js'
import { OriginAuthError, OriginResponseError, OriginUnavailableError } from './errors.js'

export interface OriginRequest {
  registry: string
  /** repository name as origin knows it (docker.io's `library/` already added) */
  name: string
  /** path after `/v2/<name>/`, e.g. `manifests/v1` */
  path: string
  method: 'GET' | 'HEAD'
  headers?: Record<string, string>
  query?: string
  signal: AbortSignal
}

export interface OriginResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Readable & { dump(): Promise<void> }
}

export interface OriginOptions {
  upstreams: ReadonlyMap<string, URL>
  credentials: ReadonlyMap<string, { username: string; password: string }>
  timeoutMs: number
  bodyTimeoutMs: number
  retries: number
  logger: Logger
  /** called with every upstream response: for metrics */
  onResponse?: (registry: string, method: string, status: number) => void
}

const BACKOFF_BASE_MS = 100
const BACKOFF_MAX_MS = 5_000
const RETRY_AFTER_MAX_MS = 10_000
const MAX_REDIRECTIONS = 5

/**
 * The client for upstream registries: auth, retries with backoff on 429/5xx and network errors
 * (honouring Retry-After), a timeout on every wait, redirects followed (blob storage behind a
 * CDN) without carrying credentials to another host.
 */
export class OriginClient {
  private readonly agent: Dispatcher
  private readonly auths = new Map<string, RegistryAuth>()
  private readonly opts: OriginOptions
  private readonly log: Logger

  constructor(opts: OriginOptions) {
    this.opts = opts
    this.log = opts.logger
    this.agent = new Agent({
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.bodyTimeoutMs,
      connectTimeout: opts.timeoutMs,
      keepAliveTimeout: 30_000,
      connections: 64,
    }).compose(interceptors.redirect({ maxRedirections: MAX_REDIRECTIONS }))
  }

  static fromConfig(config: Config, logger: Logger, onResponse?: OriginOptions['onResponse']): OriginClient {
    return new OriginClient({
      upstreams: config.upstreams,
      credentials: config.credentials,
      timeoutMs: config.origin.timeoutMs,
      bodyTimeoutMs: config.origin.bodyTimeoutMs,
      retries: config.origin.retries,
      logger,
      onResponse,
    })
  }

  async close(): Promise<void> {
    await this.agent.close()
  }

  /**
   * Sends a request with auth and retries. Resolves with any final status (the caller decides
   * what a 404 means); rejects with OriginUnavailableError when origin cannot be reached or keeps
   * failing, and OriginAuthError when it refuses our credentials.
   */
  async request(req: OriginRequest): Promise<OriginResponse> {
    const base = this.opts.upstreams.get(req.registry)
    if (base === undefined) throw new OriginResponseError(404, `registry ${req.registry} is not configured`)
    const auth = this.authFor(req.registry)
    const scope = `repository:${req.name}:pull`
    const basePath = base.pathname.replace(/\/$/, '')
    const path = `${basePath}/v2/${req.name}/${req.path}${req.query ? `?${req.query}` : ''}`
    let authRetried = false
    let lastError: Error | undefined
    for (let attempt = 0; attempt <= this.opts.retries; ) {
      req.signal.throwIfAborted()
      const headers: Record<string, string> = { ...req.headers, 'user-agent': 'shoal' }
      const authorization = await auth.header(scope, req.signal)
      if (authorization) headers.authorization = authorization
      let res: Dispatcher.ResponseData
      try {
        res = await this.agent.request({ origin: base.origin, path, method: req.method, headers, signal: req.signal })
      } catch (err) {
        if (req.signal.aborted) throw err
        lastError = err as Error
        this.log.debug({ err, registry: req.registry, path, attempt }, 'origin request failed')
        attempt++
        if (attempt <= this.opts.retries) await sleep(backoff(attempt), undefined, { signal: req.signal })
        continue
      }
      const status = res.statusCode
      this.opts.onResponse?.(req.registry, req.method, status)
      if (status === 401 && !authRetried) {
        authRetried = true
        const challenge = header(res.headers, 'www-authenticate')
        await res.body.dump()
        if (auth.onUnauthorized(challenge, scope)) continue
        throw new OriginAuthError(401, `origin ${req.registry} requires credentials for ${req.name}`)
      }
      if (status === 401 || status === 403) {
        await res.body.dump()
        throw new OriginAuthError(status, `origin ${req.registry} denied access to ${req.name} (${status})`)
      }
      if (status === 429 || status >= 500) {
        const retryAfterMs = parseRetryAfter(header(res.headers, 'retry-after'))
        await res.body.dump()
        lastError =
          status === 429
            ? new OriginResponseError(429, `origin ${req.registry} is rate limiting`, { retryAfterMs })
            : new OriginUnavailableError(`origin ${req.registry} answered ${status}`)
        attempt++
        if (attempt <= this.opts.retries && (retryAfterMs ?? 0) <= RETRY_AFTER_MAX_MS) {
          await sleep(retryAfterMs ?? backoff(attempt), undefined, { signal: req.signal })
          continue
        }
        break
      }
      return { status, headers: res.headers, body: res.body as OriginResponse['body'] }
    }
    if (lastError instanceof OriginResponseError) throw lastError
    throw new OriginUnavailableError(`origin ${req.registry} unavailable: ${lastError?.message ?? 'unknown error'}`, {
      cause: lastError,
    })
  }

  private authFor(registry: string): RegistryAuth {
    let auth = this.auths.get(registry)
    if (auth === undefined) {
      auth = new RegistryAuth(this.opts.credentials.get(registry), this.agent, this.opts.timeoutMs)
      this.auths.set(registry, auth)
    }
    return auth
  }
}

export function header(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

function backoff(attempt: number): number {
  const ms = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** (attempt - 1))
  return ms / 2 + Math.random() * (ms / 2)
}

/** Retry-After as seconds or an HTTP date, in ms. */
export function parseRetryAfter(value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  if (/^\d+$/.test(value.trim())) return Number(value) * 1000
  const at = Date.parse(value)
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now())
}
