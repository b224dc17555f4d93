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
  readonly p2p: P2pConfig
}

export interface P2pConfig {
  /** false: a plain mirror, no peer layer */
  readonly enabled: boolean
  /** libp2p listen multiaddrs */
  readonly listen: readonly string[]
  /** multiaddrs announced to peers instead of the listen ones (empty: the listen ones) */
  readonly announce: readonly string[]
  /** multiaddrs (with or without /p2p/ID) or dns:NAME:PORT */
  readonly bootstrap: readonly string[]
  /** pre-shared key file of a private swarm; '' for none */
  readonly swarmKeyFile: string
  /** the peer data port (chunk bytes) */
  readonly peerListen: { host: string; port: number }
  /** TLS (PSK from a libp2p-authenticated ticket) on the peer data port */
  readonly encrypt: boolean
  readonly chunkSize: number
  /** concurrent chunk uploads to peers */
  readonly maxUploads: number
  /** chunk requests to peers in flight at once, over all downloads */
  readonly maxRequests: number
  /** cap on upload bytes per second to peers; 0: none */
  readonly uploadRate: number
  /** cap on blob bytes received per second, from peers and origin together; 0: none */
  readonly downloadRate: number
  /** how long a download looks for peers before it goes to origin */
  readonly lookupTimeoutMs: number
  /** kad-dht's K: bucket size, peers per query answer, provider records per blob */
  readonly dhtBucketSize: number
  /** how long a peer that sent bad bytes is left out */
  readonly penaltyMs: number
  /** nodes that share the origin fetch of a blob nobody holds (the closest to its DHT key) */
  readonly originFetchers: number
  /** an origin fetcher whose holdings do not grow for this long is taken over */
  readonly fetcherStallMs: number
  /** a blob completed in a fan-out is announced after a random delay up to this */
  readonly announceSpreadMs: number
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
