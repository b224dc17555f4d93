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
}

export class ConfigError extends Error {
  readonly key: string
  constructor(key: string, message: string) {
    super(`invalid config: ${key}: ${message}`)
    this.name = 'ConfigError'
    this.key = key
  }
}
