import { readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { parse as parseYaml } from 'yaml'
import { isValidRegistryHost } from '../oci/reference.js'
import { parseDuration } from '../util/duration.js'
import { type Config, ConfigError, type Credential, type LogLevel } from './schema.js'

/** config/default.yaml, shipped with the package: the built-in defaults. */
export const DEFAULT_CONFIG_PATH = new URL('../../../config/default.yaml', import.meta.url)

type Raw = Record<string, unknown>

export interface ConfigSources {
  /** --config FILE, else SHOAL_CONFIG */
  file?: string | undefined
  env?: NodeJS.ProcessEnv
  /** flags by config key (`listen`, `dataDir`, …); `upstreams` as `REGISTRY=URL` strings */
  flags?: Partial<Record<FlagKey, string | string[] | undefined>>
}

export type FlagKey =
  | 'listen'
  | 'dataDir'
  | 'defaultRegistry'
  | 'logLevel'
  | 'upstreams'
  | 'store.maxBytes'
  | 'store.maxPercent'
  | 'p2p.enabled'
  | 'p2p.listen'
  | 'p2p.bootstrap'
  | 'p2p.announce'
  | 'p2p.swarmKeyFile'
  | 'p2p.peerListen'

/** Scalar keys and their environment variables. Maps (upstreams, credentials) are handled apart. */
const SCALAR_KEYS = [
  'listen',
  'dataDir',
  'defaultRegistry',
  'logLevel',
  'manifests.tagTtl',
  'manifests.staleIfError',
  'origin.timeout',
  'origin.bodyTimeout',
  'origin.retries',
  'store.maxBytes',
  'store.maxPercent',
  'store.highWatermark',
  'store.lowWatermark',
  'store.manifestMaxBytes',
  'store.maxTags',
  'p2p.enabled',
  'p2p.listen',
  'p2p.announce',
  'p2p.bootstrap',
  'p2p.swarmKeyFile',
  'p2p.peerListen',
  'p2p.encrypt',
  'p2p.chunkSize',
  'p2p.maxUploads',
  'p2p.maxRequests',
  'p2p.uploadRate',
  'p2p.downloadRate',
  'p2p.lookupTimeout',
  'p2p.dhtBucketSize',
  'p2p.penalty',
  'p2p.originFetchers',
  'p2p.fetcherStall',
  'p2p.announceSpread',
] as const
type ScalarKey = (typeof SCALAR_KEYS)[number]

export function envName(key: string): string {
  return `SHOAL_${key.replace(/\./g, '_').replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase()}`
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

/**
 * Loads the configuration once: built-in defaults → file → environment → flags, then validates
 * every key and freezes the result. Throws ConfigError naming the first bad key.
 */
export function loadConfig(sources: ConfigSources = {}): Config {
  const env = sources.env ?? {}
  const defaults = readYaml(DEFAULT_CONFIG_PATH, '(built-in defaults)')
  const filePath = sources.file ?? env.SHOAL_CONFIG
  const file = filePath ? readYaml(filePath, filePath) : {}

  const scalars = new Map<ScalarKey, unknown>()
  for (const key of SCALAR_KEYS) {
    const fromDefaults = getPath(defaults, key)
    const fromFile = getPath(file, key)
    const fromEnv = env[envName(key)]
    const fromFlag = sources.flags?.[key as FlagKey]
    scalars.set(key, fromFlag ?? fromEnv ?? fromFile ?? fromDefaults)
  }
  for (const top of Object.keys(file)) {
    if (!KNOWN_TOP_KEYS.has(top)) throw new ConfigError(top, 'unknown key')
  }

  const upstreams = new Map<string, URL>()
  const addUpstreams = (entries: Iterable<[string, unknown]>, origin: string): void => {
    for (const [registry, url] of entries) upstreams.set(checkRegistry(registry, origin), checkUrl(url, `${origin}.${registry}`))
  }
  addUpstreams(Object.entries(asMap(defaults.upstreams, 'upstreams')), 'upstreams')
  addUpstreams(Object.entries(asMap(file.upstreams, 'upstreams')), 'upstreams')
  const envUpstreams = env[envName('upstream')]
  if (envUpstreams) addUpstreams(splitPairs(envUpstreams.split(','), 'SHOAL_UPSTREAM'), 'SHOAL_UPSTREAM')
  const flagUpstreams = sources.flags?.upstreams
  if (flagUpstreams !== undefined) {
    addUpstreams(splitPairs([flagUpstreams].flat(), '--upstream'), '--upstream')
  }

  const defaultRegistry = str(scalars.get('defaultRegistry'), 'defaultRegistry')
  if (!upstreams.has(defaultRegistry)) {
    throw new ConfigError('defaultRegistry', `"${defaultRegistry}" is not one of the configured upstreams`)
  }

  const config: Config = {
    listen: parseListen(str(scalars.get('listen'), 'listen')),
    dataDir: resolveDataDir(str(scalars.get('dataDir'), 'dataDir', true)),
    defaultRegistry,
    logLevel: oneOf(scalars.get('logLevel'), 'logLevel', LOG_LEVELS),
    upstreams,
    credentials: loadCredentials(asMap(file.credentials, 'credentials'), env),
    manifests: {
      tagTtlMs: duration(scalars.get('manifests.tagTtl'), 'manifests.tagTtl'),
      staleIfError: bool(scalars.get('manifests.staleIfError'), 'manifests.staleIfError'),
    },
    origin: {
      timeoutMs: duration(scalars.get('origin.timeout'), 'origin.timeout'),
      bodyTimeoutMs: duration(scalars.get('origin.bodyTimeout'), 'origin.bodyTimeout'),
      retries: int(scalars.get('origin.retries'), 'origin.retries', 0, 10),
    },
    store: {
      maxBytes: bytes(scalars.get('store.maxBytes'), 'store.maxBytes'),
      maxPercent: percent(scalars.get('store.maxPercent'), 'store.maxPercent'),
      highWatermark: percent(scalars.get('store.highWatermark'), 'store.highWatermark') / 100,
      lowWatermark: percent(scalars.get('store.lowWatermark'), 'store.lowWatermark') / 100,
      manifestMaxBytes: bytes(scalars.get('store.manifestMaxBytes'), 'store.manifestMaxBytes'),
      maxTags: int(scalars.get('store.maxTags'), 'store.maxTags', 1, 100_000_000),
    },
    p2p: {
      enabled: bool(scalars.get('p2p.enabled'), 'p2p.enabled'),
      listen: list(scalars.get('p2p.listen'), 'p2p.listen'),
      announce: list(scalars.get('p2p.announce'), 'p2p.announce'),
      bootstrap: list(scalars.get('p2p.bootstrap'), 'p2p.bootstrap'),
      swarmKeyFile: str(scalars.get('p2p.swarmKeyFile'), 'p2p.swarmKeyFile', true),
      peerListen: parseListen(str(scalars.get('p2p.peerListen'), 'p2p.peerListen'), 'p2p.peerListen'),
      encrypt: bool(scalars.get('p2p.encrypt'), 'p2p.encrypt'),
      chunkSize: chunkSize(scalars.get('p2p.chunkSize')),
      maxUploads: int(scalars.get('p2p.maxUploads'), 'p2p.maxUploads', 1, 4096),
      maxRequests: int(scalars.get('p2p.maxRequests'), 'p2p.maxRequests', 1, 4096),
      uploadRate: bytes(scalars.get('p2p.uploadRate'), 'p2p.uploadRate'),
      downloadRate: bytes(scalars.get('p2p.downloadRate'), 'p2p.downloadRate'),
      lookupTimeoutMs: duration(scalars.get('p2p.lookupTimeout'), 'p2p.lookupTimeout'),
      dhtBucketSize: int(scalars.get('p2p.dhtBucketSize'), 'p2p.dhtBucketSize', 2, 64),
      penaltyMs: duration(scalars.get('p2p.penalty'), 'p2p.penalty'),
      originFetchers: int(scalars.get('p2p.originFetchers'), 'p2p.originFetchers', 1, 64),
      fetcherStallMs: duration(scalars.get('p2p.fetcherStall'), 'p2p.fetcherStall'),
      announceSpreadMs: duration(scalars.get('p2p.announceSpread'), 'p2p.announceSpread'),
    },
  }
  if (config.p2p.swarmKeyFile !== '') {
    try {
      readFileSync(config.p2p.swarmKeyFile)
    } catch (err) {
      throw new ConfigError('p2p.swarmKeyFile', `cannot read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
    }
  }
  if (config.store.lowWatermark >= config.store.highWatermark) {
    throw new ConfigError('store.lowWatermark', 'must be below store.highWatermark')
  }
  return deepFreeze(config)
}

const KNOWN_TOP_KEYS = new Set(['listen', 'dataDir', 'defaultRegistry', 'logLevel', 'upstreams', 'credentials', 'manifests', 'origin', 'store', 'p2p'])

function readYaml(path: string | URL, label: string): Raw {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError('config', `cannot read ${label}: ${(err as Error).message}`)
  }
  let parsed: unknown
  try {
    parsed = parseYaml(text)
  } catch (err) {
    throw new ConfigError('config', `${label} is not valid YAML: ${(err as Error).message.split('\n')[0]}`)
  }
  if (parsed === null || parsed === undefined) return {}
  if (typeof parsed !== 'object' || Array.isArray(parsed)) throw new ConfigError('config', `${label} must be a YAML mapping`)
  return parsed as Raw
}

function getPath(obj: Raw, key: string): unknown {
  let cur: unknown = obj
  for (const part of key.split('.')) {
    if (cur === null || typeof cur !== 'object') return undefined
    cur = (cur as Raw)[part]
  }
  return cur
}

function asMap(value: unknown, key: string): Raw {
  if (value === undefined || value === null) return {}
  if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError(key, 'expected a mapping')
  return value as Raw
}

function splitPairs(items: string[], key: string): [string, string][] {
  return items
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map((item) => {
      const eq = item.indexOf('=')
      if (eq <= 0) throw new ConfigError(key, `expected REGISTRY=URL, got "${item}"`)
      return [item.slice(0, eq), item.slice(eq + 1)]
    })
}

function checkRegistry(registry: string, key: string): string {
  if (!isValidRegistryHost(registry)) throw new ConfigError(key, `"${registry}" is not a registry host name`)
  return registry
}

function checkUrl(value: unknown, key: string): URL {
  if (typeof value !== 'string') throw new ConfigError(key, 'expected a URL')
  const withScheme = /^[a-z]+:\/\//i.test(value) ? value : `https://${value}`
  let url: URL
  try {
    url = new URL(withScheme)
  } catch {
    throw new ConfigError(key, `"${value}" is not a URL`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(key, `"${value}" must be http or https`)
  if (url.username || url.password) throw new ConfigError(key, 'put credentials under credentials:, not in the URL')
  return url
}

function str(value: unknown, key: string, allowEmpty = false): string {
  if (typeof value === 'number') return String(value)
  if (typeof value !== 'string' || (!allowEmpty && value.trim() === '')) throw new ConfigError(key, 'expected a non-empty string')
  return value.trim()
}

/** A list: a YAML sequence, repeated flags, or a comma-separated string (environment). */
function list(value: unknown, key: string): string[] {
  const items = typeof value === 'string' ? value.split(',') : value === null || value === undefined ? [] : value
  if (!Array.isArray(items) || items.some((v) => typeof v !== 'string')) throw new ConfigError(key, 'expected a list of strings')
  return (items as string[]).map((v) => v.trim()).filter((v) => v !== '')
}

const MIN_CHUNK = 64 * 1024
const MAX_CHUNK = 64 * 1024 * 1024

function chunkSize(value: unknown): number {
  const n = parseBytes(value)
  if (n === undefined || n < MIN_CHUNK || n > MAX_CHUNK) {
    throw new ConfigError('p2p.chunkSize', `expected a size from 64KiB to 64MiB, got ${JSON.stringify(value)}`)
  }
  return n
}

function oneOf<T extends string>(value: unknown, key: string, allowed: readonly T[]): T {
  if (typeof value === 'string' && (allowed as readonly string[]).includes(value)) return value as T
  throw new ConfigError(key, `expected one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`)
}

function duration(value: unknown, key: string): number {
  const ms = parseDuration(value)
  if (ms === undefined) throw new ConfigError(key, `expected a duration like 30s or 5m, got ${JSON.stringify(value)}`)
  return ms
}

function bool(value: unknown, key: string): boolean {
  if (typeof value === 'boolean') return value
  if (value === 'true' || value === '1') return true
  if (value === 'false' || value === '0') return false
  throw new ConfigError(key, `expected true or false, got ${JSON.stringify(value)}`)
}

function int(value: unknown, key: string, min: number, max: number): number {
  const n = typeof value === 'string' && /^-?\d+$/.test(value) ? Number(value) : value
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    throw new ConfigError(key, `expected an integer from ${min} to ${max}, got ${JSON.stringify(value)}`)
  }
  return n
}

const BYTES_RE = /^(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?$/i
const BYTE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12, p: 1e15, pb: 1e15,
  ki: 2 ** 10, kib: 2 ** 10, mi: 2 ** 20, mib: 2 ** 20, gi: 2 ** 30, gib: 2 ** 30, ti: 2 ** 40, tib: 2 ** 40, pi: 2 ** 50, pib: 2 ** 50,
}

/** A byte count: a number, or a string like `500MB`, `20GiB`, `1.5T`. Undefined when malformed. */
export function parseBytes(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined
  if (typeof value !== 'string') return undefined
  const m = BYTES_RE.exec(value.trim())
  const unit = BYTE_UNITS[(m?.[2] ?? '').toLowerCase()]
  if (m === null || unit === undefined) return undefined
  const n = Math.floor(Number(m[1]) * unit)
  return Number.isSafeInteger(n) ? n : undefined
}

function bytes(value: unknown, key: string): number {
  const n = parseBytes(value)
  if (n === undefined) throw new ConfigError(key, `expected a size like 500MB or 20GiB (0 for none), got ${JSON.stringify(value)}`)
  return n
}

function percent(value: unknown, key: string): number {
  const text = typeof value === 'string' ? value.trim().replace(/%$/, '') : value
  const n = typeof text === 'string' && /^\d+(?:\.\d+)?$/.test(text) ? Number(text) : text
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0 || n > 100) {
    throw new ConfigError(key, `expected a percentage from 0 to 100, got ${JSON.stringify(value)}`)
  }
  return n
}

export function parseListen(value: string, key = 'listen'): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(value)
  const port = m ? Number(m[3]) : Number.NaN
  if (m === null || port > 65535) throw new ConfigError(key, `expected HOST:PORT, got "${value}"`)
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port }
}

function resolveDataDir(value: string): string {
  if (value !== '') return value
  if (process.getuid?.() === 0) return '/var/lib/shoal'
  return join(process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state'), 'shoal')
}

function loadCredentials(raw: Raw, env: NodeJS.ProcessEnv): Map<string, Credential> {
  const out = new Map<string, Credential>()
  for (const [registry, value] of Object.entries(raw)) {
    const key = `credentials.${registry}`
    checkRegistry(registry, key)
    const entry = asMap(value, key)
    const username = str(entry.username, `${key}.username`)
    let password: string | undefined
    if (typeof entry.password === 'string') password = entry.password
    else if (typeof entry.passwordFile === 'string') {
      try {
        password = readFileSync(entry.passwordFile, 'utf8').trim()
      } catch (err) {
        throw new ConfigError(`${key}.passwordFile`, `cannot read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
      }
    } else if (typeof entry.passwordEnv === 'string') {
      password = env[entry.passwordEnv]
      if (password === undefined) throw new ConfigError(`${key}.passwordEnv`, `environment variable ${entry.passwordEnv} is not set`)
    }
    if (password === undefined) throw new ConfigError(key, 'needs one of password, passwordFile or passwordEnv')
    out.set(registry, { username, password })
  }
  return out
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !(value instanceof URL) && !(value instanceof Map)) {
    for (const v of Object.values(value)) deepFreeze(v)
    Object.freeze(value)
  }
  return value
}
