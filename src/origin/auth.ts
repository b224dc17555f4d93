import type { Dispatcher } from 'undici'
import type { Credential } from '../config/schema.js'
import { OriginAuthError, OriginUnavailableError } from './errors.js'
import { timeoutSignal } from '../util/abort.js'

export interface Challenge {
  scheme: 'bearer' | 'basic'
  realm?: string
  service?: string
}

const PARAM_RE = /([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g

/** Parses a `WWW-Authenticate` header (the first challenge is used). */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined
  const space = header.indexOf(' ')
  const scheme = (space === -1 ? header : header.slice(0, space)).toLowerCase()
  if (scheme !== 'bearer' && scheme !== 'basic') return undefined
  const params: Record<string, string> = {}
  for (const m of header.slice(space + 1).matchAll(PARAM_RE)) params[(m[1] as string).toLowerCase()] = m[2] as string
  return { scheme, realm: params.realm, service: params.service }
}

interface CachedToken {
  value: string
  expiresAt: number
}

const DEFAULT_TOKEN_TTL_S = 60
/** Refresh a little before expiry so that a token never dies mid-request. */
const EXPIRY_MARGIN = 0.9

/**
 * Upstream credentials for one registry: Basic when the registry asks for it, or the Bearer
 * token flow (anonymous, or with Basic credentials at the token endpoint), one token per scope,
 * cached until shortly before it expires. Concurrent requests for a scope share one token fetch.
 */
export class RegistryAuth {
  private challenge: Challenge | undefined
  private readonly tokens = new Map<string, CachedToken>()
  private readonly pending = new Map<string, Promise<string>>()
  private readonly credential: Credential | undefined
  private readonly dispatcher: Dispatcher
  private readonly timeoutMs: number

  constructor(credential: Credential | undefined, dispatcher: Dispatcher, timeoutMs: number) {
    this.credential = credential
    this.dispatcher = dispatcher
    this.timeoutMs = timeoutMs
  }

  /** The Authorization header to send for a scope, if the registry is known to want one. */
  async header(scope: string, signal: AbortSignal): Promise<string | undefined> {
    const ch = this.challenge
    if (ch === undefined) return undefined
    if (ch.scheme === 'basic') return this.basic()
    const cached = this.tokens.get(scope)
    if (cached !== undefined && cached.expiresAt > Date.now()) return `Bearer ${cached.value}`
    let inflight = this.pending.get(scope)
    if (inflight === undefined) {
      inflight = this.fetchToken(ch, scope, signal).finally(() => this.pending.delete(scope))
      this.pending.set(scope, inflight)
    }
    return `Bearer ${await inflight}`
  }

  /** Records a 401's challenge. Returns false when retrying cannot help. */
  onUnauthorized(wwwAuthenticate: string | undefined, scope: string): boolean {
    const ch = parseChallenge(wwwAuthenticate)
    if (ch === undefined) return false
    if (ch.scheme === 'basic' && this.credential === undefined) return false
    const first = this.challenge === undefined || this.challenge.realm !== ch.realm || this.challenge.scheme !== ch.scheme
    this.challenge = ch
    const hadToken = this.tokens.delete(scope)
    return first || hadToken
  }

  private basic(): string | undefined {
    if (this.credential === undefined) return undefined
    return `Basic ${Buffer.from(`${this.credential.username}:${this.credential.password}`).toString('base64')}`
  }

  private async fetchToken(ch: Challenge, scope: string, signal: AbortSignal): Promise<string> {
    if (!ch.realm) throw new OriginAuthError(401, 'bearer challenge without realm')
    const url = new URL(ch.realm)
    if (ch.service) url.searchParams.set('service', ch.service)
    url.searchParams.set('scope', scope)
    const headers: Record<string, string> = { accept: 'application/json' }
    const basic = this.basic()
    if (basic) headers.authorization = basic
    let res: Dispatcher.ResponseData
    try {
      res = await this.dispatcher.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method: 'GET',
        headers,
        signal: timeoutSignal(this.timeoutMs, signal),
      })
    } catch (err) {
      throw new OriginUnavailableError(`token endpoint ${url.origin} unreachable: ${(err as Error).message}`, { cause: err })
    }
    if (res.statusCode !== 200) {
      await res.body.dump()
      if (res.statusCode >= 500) throw new OriginUnavailableError(`token endpoint answered ${res.statusCode}`)
      throw new OriginAuthError(res.statusCode, `token endpoint refused scope ${scope} (${res.statusCode})`)
    }
    const body = (await res.body.json()) as { token?: string; access_token?: string; expires_in?: number }
    const value = body.token ?? body.access_token
    if (!value) throw new OriginAuthError(502, 'token endpoint answered without a token')
    const ttl = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_TTL_S
    this.tokens.set(scope, { value, expiresAt: Date.now() + ttl * 1000 * EXPIRY_MARGIN })
    return value
  }
}
