export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'

export interface Credential {
  username: string
  password: string
}

export interface Config {
  readonly listen: { host: string; port: number }
  readonly dataDir: string
  readonly defaultRegistry: string
  readonly logLevel: LogLevel
  /** registry host as runtimes name it → base URL Shoal fetches from */
  readonly upstreams: ReadonlyMap<string, URL>
  readonly credentials: ReadonlyMap<string, Credential>
  readonly manifests: { readonly tagTtlMs: number; readonly staleIfError: boolean }
  readonly origin: { readonly timeoutMs: number; readonly bodyTimeoutMs: number; readonly retries: number }
  readonly store: StoreConfig
}

export interface StoreConfig {
  /** cap on blob bytes; 0: none */
  readonly maxBytes: number
  /** cap on blob bytes as a percentage of the data dir's file system; 0: none */
  readonly maxPercent: number
  /** fractions of the quota: eviction starts above high and stops below low */
  readonly highWatermark: number
  readonly lowWatermark: number
  readonly manifestMaxBytes: number
  readonly maxTags: number
}

export class ConfigError extends Error {
  readonly key: string
  constructor(key: string, message: string) {
    super(`invalid config: ${key}: ${message}`)
    this.name = 'ConfigError'
    this.key = key
  }
}
