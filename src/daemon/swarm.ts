import type { Logger } from 'pino'
import type { P2pConfig } from '../config/schema.js'
import type { Metrics } from '../metrics/index.js'
import { createPeerNode, type PeerNode } from '../p2p/node.js'
import { createPeerDataClient, createPeerDataServer, type PeerDataClient, type PeerDataServer, type TokenBucket } from '../peer/index.js'
import type { BlobStore } from '../store/blob-store.js'
import { discoverPeers } from '../swarm/discover.js'
import { planFanout } from '../swarm/fanout.js'
import { PeerChunkSource, unknownHoldings } from '../swarm/peer-source.js'
import { PeerPenalties } from '../swarm/penalties.js'
import { StoreChunkProvider } from '../swarm/provider.js'
import type { Download } from '../transfer/download.js'
import type { SwarmHooks } from '../transfer/swarm-download.js'

/** Peer info requests during discovery, each. */
const INFO_TIMEOUT_MS = 2_000
/**
 * A blob's origin fetchers asked to start, each: their answers name the nodes near the blob's
 * key, which make every node choose the same fetchers. In a 16-node fan-out on two cores, most
 * asks at the round's start took longer than 2 s, their answers were lost, and nodes that had
 * missed a near node chose other fetchers (10/3/3 nodes per pair on a 44 MB blob).
 */
const FETCHER_ASK_TIMEOUT_MS = 5_000
/** Peer data plane: ticket exchange, response headers, body idle. */
const DATA_TIMEOUT_MS = 10_000
/** Peers asked about one blob. */
const MAX_PEERS_PER_BLOB = 8

export interface SwarmStatus {
  peerId: string
  listen: string[]
  peerPort: number
  encrypt: boolean
  privateSwarm: boolean
  connectedPeers: number
  routingTableSize: number
  joined: boolean
  bytesFromPeers: number
  bytesToPeers: number
  bytesFromPeer: Record<string, number>
  uploads: number
  penalisedPeers: number
  announced: number
}

export interface Swarm {
  readonly hooks: SwarmHooks
  /** at least one peer in the routing table */
  joined(): boolean
  status(): SwarmStatus
  /** bytes accepted from a peer (for status) */
  received(peerId: string, bytes: number): void
  stop(): Promise<void>
}

export interface SwarmOptions {
  config: P2pConfig
  dataDir: string
  store: BlobStore
  /** the download in progress for a digest (wired after the blob service exists) */
  download(digest: string): Download | undefined
  /** a peer asks this node to fetch a blob as one of its origin fetchers (untrusted input) */
  want(digest: string, source: string, peerId: string): void
  metrics: Metrics
  logger: Logger
  signal: AbortSignal
  /** the node's download cap, shared with origin downloads */
  downloadBucket?: TokenBucket
}

/**
 * The peer side of a daemon: the libp2p node (identity, DHT), the peer data plane (server and
 * client), and the hooks through which the transfer layer finds peers and tells the swarm what
 * this node holds. Announcements follow the store: what it holds at start is announced, what
 * arrives is announced from its first verified chunk, what it evicts is withdrawn.
 */
export async function startSwarm(opts: SwarmOptions): Promise<Swarm> {
  const { config, store, logger } = opts
  if (config.swarmKeyFile === '') {
    logger.warn('no swarm key (p2p.swarmKeyFile): any host that can reach the p2p ports may join this swarm; set one on shared networks')
  }
  const node: PeerNode = await createPeerNode({
    dataDir: opts.dataDir,
    listen: [...config.listen],
    announce: config.announce.length > 0 ? [...config.announce] : undefined,
    bootstrap: [...config.bootstrap],
    swarmKeyFile: config.swarmKeyFile === '' ? undefined : config.swarmKeyFile,
    routing: { kBucketSize: config.dhtBucketSize },
    logger: logger.child({ component: 'p2p' }),
    signal: opts.signal,
  })
  let server: PeerDataServer
  try {
    server = await createPeerDataServer({
      libp2p: node.libp2p,
      provider: new StoreChunkProvider({
        store,
        download: opts.download,
        want: opts.want,
        near: (digest, count) => node.router.knownNearest(digest, count),
        chunkSize: config.chunkSize,
        uploadBuffers: config.maxUploads,
        logger,
      }),
      encrypt: config.encrypt,
      listen: config.peerListen,
      maxUploads: config.maxUploads,
      uploadBytesPerSecond: config.uploadRate > 0 ? config.uploadRate : undefined,
      logger: logger.child({ component: 'peer-data' }),
    })
  } catch (err) {
    await node.stop()
    throw err
  }
  const client: PeerDataClient = createPeerDataClient({
    libp2p: node.libp2p,
    encrypt: config.encrypt,
    logger,
    timeoutMs: DATA_TIMEOUT_MS,
    downloadBucket: opts.downloadBucket,
    warm: true,
  })
  const penalties = new PeerPenalties(config.penaltyMs)
  const fromPeer = new Map<string, number>()
  /**
   * Fan-out commits waiting for their announce, a random delay up to p2p.announceSpread (60 s by
   * default). The fleet completes a fan-out within seconds, and nobody needs the records then
   * (the origin fetchers name the nodes fetching a blob to each other); sent at once, N nodes x
   * K records per blob went in one burst to the K nodes nearest each key, the origin fetchers
   * among them, while the slowest nodes were still downloading: 512 ADD_PROVIDER requests in a
   * 16-node round, and libp2p was on 20-59% of the daemons' profile samples in its last 30 s
   * (`scripts/bench/fanout --profile`).
   */
  const spreading = new Set<NodeJS.Timeout>()

  node.router.enqueue([...store.list()].map((meta) => meta.digest))
  const unsubscribe = store.onEvict((digest) => {
    node.router.withdraw(digest).catch((err: Error) => logger.debug({ digest, err: err.message }, 'withdraw failed'))
  })

  const hooks: SwarmHooks = {
    chunkSize: config.chunkSize,
    maxRequests: config.maxRequests,
    fetcherStallMs: config.fetcherStallMs,
    joined: () => node.router.ready(),
    fanout: (locator, plan, signal) =>
      planFanout(locator, plan, {
        selfId: node.peerId,
        closest: (digest, options) => node.router.closest(digest, options),
        client,
        penalties,
        fetchers: config.originFetchers,
        lookupTimeoutMs: config.lookupTimeoutMs,
        infoTimeoutMs: FETCHER_ASK_TIMEOUT_MS,
        logger,
        signal,
      }),
    discover: (digest, signal, known) =>
      discoverPeers(digest, {
        known,
        router: node.router,
        client,
        penalties,
        logger,
        chunkSize: config.chunkSize,
        lookupTimeoutMs: config.lookupTimeoutMs,
        infoTimeoutMs: INFO_TIMEOUT_MS,
        maxPeers: MAX_PEERS_PER_BLOB,
        signal,
      }),
    exchangedPeer: (digest, peerId, plan, signal) =>
      peerId === node.peerId || penalties.isPenalised(peerId)
        ? undefined
        : new PeerChunkSource({ id: peerId, addrs: [] }, unknownHoldings(plan), client, digest, signal),
    announce: (digest, options) => {
      const advertise = (): void => {
        node.router.advertise(digest).catch((err: Error) => logger.debug({ digest, err: err.message }, 'announce deferred'))
      }
      if (options?.spread !== true || config.announceSpreadMs === 0) return advertise()
      const timer = setTimeout(() => {
        spreading.delete(timer)
        advertise()
      }, Math.random() * config.announceSpreadMs)
      spreading.add(timer)
    },
    penalise: (peerId) => {
      penalties.penalise(peerId)
      opts.metrics.badChunks.inc()
    },
    completed: (digest, table) => {
      store.putChunkTable(digest, { chunkSize: config.chunkSize, hashes: table }).catch((err: Error) => logger.warn({ digest, err: err.message }, 'cannot record chunk table'))
    },
  }

  const status = (): SwarmStatus => {
    const s = node.status()
    const served = server.stats()
    return {
      peerId: s.peerId,
      listen: s.listenAddrs,
      peerPort: server.port,
      encrypt: server.encrypt,
      privateSwarm: config.swarmKeyFile !== '',
      connectedPeers: s.connectedPeers,
      routingTableSize: s.routingTableSize,
      joined: node.router.ready(),
      bytesFromPeers: [...fromPeer.values()].reduce((a, b) => a + b, 0),
      bytesToPeers: served.bytesSent,
      bytesFromPeer: Object.fromEntries(fromPeer),
      uploads: served.uploads,
      penalisedPeers: penalties.count(),
      announced: node.router.advertised().length,
    }
  }
  opts.metrics.peerStats = status
  logger.info({ peerId: node.peerId, listen: node.status().listenAddrs, peerPort: server.port, encrypt: server.encrypt }, 'joined the peer layer')

  return {
    hooks,
    joined: () => node.router.ready(),
    status,
    received: (peerId, bytes) => fromPeer.set(peerId, (fromPeer.get(peerId) ?? 0) + bytes),
    stop: async () => {
      for (const timer of spreading) clearTimeout(timer)
      unsubscribe()
      await server.close()
      await client.close()
      await node.stop()
    },
  }
}
