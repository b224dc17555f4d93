import { setMaxListeners } from 'node:events'
import { pino, type Logger } from 'pino'
import type { Config } from '../config/schema.js'
import { Metrics } from '../metrics/index.js'
import { OriginBlobSource } from '../origin/blob-source.js'
import { OriginClient } from '../origin/client.js'
import { buildServer } from '../registry/server.js'
import { BlobStore } from '../store/blob-store.js'
import { BlobSizes } from '../transfer/blob-sizes.js'
import { BlobService } from '../transfer/blob-service.js'
import { ManifestService } from '../transfer/manifest-service.js'
import { isDigest, parseDigest } from '../oci/digest.js'
import { isValidName } from '../oci/reference.js'
import { pipeline } from 'node:stream'
import { ThrottleStream, TokenBucket } from '../peer/index.js'
import type { BlobLocator, BlobSource } from '../transfer/types.js'
import { VERSION } from '../version.js'
import { type Swarm, startSwarm } from './swarm.js'

export interface Daemon {
  /** the /v2 listener, e.g. http://127.0.0.1:5050 */
  readonly url: string
  readonly logger: Logger
  stop(): Promise<void>
}

export interface DaemonOptions {
  logger?: Logger
}

/** Downloads in progress above which a peer's fetch request is ignored. */
const MAX_WANTED_DOWNLOADS = 32

/** A peer's fetch request (`registry/name` and digest), if it names a registry this node mirrors. */
function wantedBlob(digest: string, from: string, config: Config): BlobLocator | undefined {
  const slash = from.indexOf('/')
  const registry = from.slice(0, slash)
  const name = from.slice(slash + 1)
  if (slash <= 0 || !config.upstreams.has(registry) || !isValidName(name) || !isDigest(digest)) return undefined
  return { registry, name, digest: parseDigest(digest) }
}

/**
 * A blob source whose bodies take from the node's download cap: a range of known length (a
 * chunk) is paid for before it is asked for, as a peer's chunk is (see TokenBucket.take); an
 * open-ended body is throttled as it is read, and its socket's backpressure holds origin back.
 */
function throttled(source: BlobSource, bucket: TokenBucket | undefined): BlobSource {
  if (bucket === undefined) return source
  return {
    kind: source.kind,
    stat: (locator, options) => source.stat(locator, options),
    open: async (locator, options) => {
      const { length, signal } = options
      if (length === undefined) {
        const res = await source.open(locator, options)
        return { ...res, body: pipeline(res.body, new ThrottleStream(bucket), () => {}) }
      }
      await bucket.take(length, signal)
      try {
        return await source.open(locator, options)
      } catch (err) {
        bucket.refund(length)
        throw err
      }
    },
  }
}

/** Attempts to resume a blob body that origin cut mid-way. */
const RESUME_ATTEMPTS = 3

/**
 * The composition root: the only place that builds concrete classes. Starts in dependency
 * order (store → origin → transfer → HTTP) and stops in reverse.
 */
export async function startDaemon(config: Config, options: DaemonOptions = {}): Promise<Daemon> {
  const logger = options.logger ?? pino({ level: config.logLevel, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime })
  const shutdown = new AbortController()
  // Every request in flight listens on it, the swarm's holdings polls of all downloads at once
  // among them: no bound on listeners (each goes when its request ends).
  setMaxListeners(0, shutdown.signal)
  const metrics = new Metrics()
  const startedAt = Date.now()

  const store = await BlobStore.open(config.dataDir, logger.child({ component: 'store' }), config.store)
  store.onEvict((digest) => logger.debug({ digest }, 'blob evicted'))
  const origin = OriginClient.fromConfig(config, logger.child({ component: 'origin' }), (registry, method, status) =>
    metrics.originResponses.inc({ registry, method, status }),
  )
  const downloadBucket = config.p2p.downloadRate > 0 ? new TokenBucket({ rate: config.p2p.downloadRate }) : undefined
  let blobs: BlobService | undefined
  let swarm: Swarm | undefined
  if (config.p2p.enabled) {
    try {
      swarm = await startSwarm({
        config: config.p2p,
        dataDir: config.dataDir,
        store,
        download: (digest) => blobs?.download(digest),
        want: (digest, from, peerId) => {
          const locator = wantedBlob(digest, from, config)
          if (locator === undefined) {
            logger.debug({ digest, from, peerId }, 'ignored a fetch request for a blob of an unknown registry or an invalid name')
            return
          }
          if (blobs?.prefetch(locator, MAX_WANTED_DOWNLOADS)) {
            logger.info({ digest, registry: locator.registry, name: locator.name, peerId }, 'fetching a blob for the swarm as one of its origin fetchers')
          }
        },
        metrics,
        logger: logger.child({ component: 'swarm' }),
        signal: shutdown.signal,
        downloadBucket,
      })
    } catch (err) {
      await origin.close()
      await store.close()
      throw err
    }
  }
  const sizes = new BlobSizes()
  blobs = new BlobService({
    store,
    sizes,
    source: throttled(new OriginBlobSource(origin), downloadBucket),
    logger: logger.child({ component: 'transfer' }),
    resumeAttempts: RESUME_ATTEMPTS,
    signal: shutdown.signal,
    swarm: swarm?.hooks,
    events: {
      onFetched: (source, bytes, peer) => {
        metrics.bytesFetched.inc({ source }, bytes)
        if (peer !== undefined) swarm?.received(peer, bytes)
      },
      onDownload: (event) => metrics.downloads.inc({ event }),
    },
  })
  const manifests = new ManifestService({
    store,
    sizes,
    origin,
    logger: logger.child({ component: 'manifests' }),
    tagTtlMs: config.manifests.tagTtlMs,
    staleIfError: config.manifests.staleIfError,
    signal: shutdown.signal,
  })

  metrics.storeUsage = () => store.usage()

  const server = buildServer({
    logger,
    metrics,
    blobs,
    manifests,
    origin,
    rules: { upstreams: config.upstreams, defaultRegistry: config.defaultRegistry },
    ready: () => ({ ready: true, swarm: swarm === undefined ? undefined : { joined: swarm.joined(), peers: swarm.status().connectedPeers } }),
    admin: { store, blobs, manifests, rules: { upstreams: config.upstreams, defaultRegistry: config.defaultRegistry }, logger },
    status: () => ({
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
      listen: `${config.listen.host}:${config.listen.port}`,
      dataDir: config.dataDir,
      store: store.usage(),
      downloadsInFlight: blobs.inflight(),
      defaultRegistry: config.defaultRegistry,
      upstreams: Object.fromEntries([...config.upstreams].map(([registry, url]) => [registry, url.href])),
      p2p: swarm === undefined ? { enabled: false } : { enabled: true, ...swarm.status() },
    }),
  })

  let address: string
  try {
    address = await server.listen({ host: config.listen.host, port: config.listen.port })
  } catch (err) {
    await swarm?.stop()
    await origin.close()
    await store.close()
    throw err
  }
  logger.info({ version: VERSION, address, dataDir: config.dataDir, upstreams: [...config.upstreams.keys()] }, 'shoal is serving')

  let stopping: Promise<void> | undefined
  return {
    url: address,
    logger,
    stop: () => {
      stopping ??= (async () => {
        shutdown.abort(new Error('shutting down'))
        await server.close()
        await blobs.settled()
        await swarm?.stop()
        await origin.close()
        await store.close()
        logger.info('shoal stopped')
      })()
      return stopping
    },
  }
}
