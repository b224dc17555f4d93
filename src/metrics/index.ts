import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/** The one registry of instruments, built by the composition root and handed to every module. */
export class Metrics {
  readonly registry = new Registry()

  readonly httpRequests = new Counter({
    name: 'shoal_registry_requests_total',
    help: 'Requests answered on the /v2 API, by endpoint kind, method and status',
    labelNames: ['kind', 'method', 'status'] as const,
    registers: [this.registry],
  })

  readonly httpDuration = new Histogram({
    name: 'shoal_registry_request_duration_seconds',
    help: 'Time to answer a /v2 request, body included',
    labelNames: ['kind'] as const,
    buckets: [0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60, 300],
    registers: [this.registry],
  })

  readonly bytesServed = new Counter({
    name: 'shoal_registry_served_bytes_total',
    help: 'Blob and manifest bytes sent to clients, by where they came from (cache, origin, stale)',
    labelNames: ['source'] as const,
    registers: [this.registry],
  })

  readonly bytesFetched = new Counter({
    name: 'shoal_transfer_fetched_bytes_total',
    help: 'Blob bytes received into the store, by source (origin, peer)',
    labelNames: ['source'] as const,
    registers: [this.registry],
  })

  readonly downloads = new Counter({
    name: 'shoal_transfer_downloads_total',
    help: 'Blob downloads, by outcome (started, completed, failed)',
    labelNames: ['event'] as const,
    registers: [this.registry],
  })

  readonly originResponses = new Counter({
    name: 'shoal_origin_responses_total',
    help: 'Responses from upstream registries, by registry, method and status',
    labelNames: ['registry', 'method', 'status'] as const,
    registers: [this.registry],
  })

  /** set by the composition root: read when metrics are scraped */
  storeUsage: () => { bytes: number; blobs: number } = () => ({ bytes: 0, blobs: 0 })

  readonly storeBytes: Gauge = new Gauge({
    name: 'shoal_store_blob_bytes',
    help: 'Bytes of complete blobs held in the store',
    registers: [this.registry],
    collect: (): void => this.storeBytes.set(this.storeUsage().bytes),
  })

  readonly storeBlobs: Gauge = new Gauge({
    name: 'shoal_store_blobs',
    help: 'Complete blobs held in the store',
    registers: [this.registry],
    collect: (): void => this.storeBlobs.set(this.storeUsage().blobs),
  })

  /** set by the composition root when the peer layer runs: read when metrics are scraped */
  peerStats: () => { connectedPeers: number; routingTableSize: number; bytesToPeers: number; uploads: number } | undefined = () => undefined

  readonly peersConnected: Gauge = new Gauge({
    name: 'shoal_p2p_connected_peers',
    help: 'Peers with an open libp2p connection',
    registers: [this.registry],
    collect: (): void => this.peersConnected.set(this.peerStats()?.connectedPeers ?? 0),
  })

  readonly routingTable: Gauge = new Gauge({
    name: 'shoal_p2p_routing_table_peers',
    help: 'Peers in the DHT routing table',
    registers: [this.registry],
    collect: (): void => this.routingTable.set(this.peerStats()?.routingTableSize ?? 0),
  })

  readonly uploads: Gauge = new Gauge({
    name: 'shoal_p2p_uploads',
    help: 'Chunk uploads to peers in progress',
    registers: [this.registry],
    collect: (): void => this.uploads.set(this.peerStats()?.uploads ?? 0),
  })

  readonly bytesUploaded: Gauge = new Gauge({
    name: 'shoal_p2p_uploaded_bytes',
    help: 'Chunk bytes sent to peers since start',
    registers: [this.registry],
    collect: (): void => this.bytesUploaded.set(this.peerStats()?.bytesToPeers ?? 0),
  })

  readonly badChunks = new Counter({
    name: 'shoal_p2p_bad_chunks_total',
    help: 'Chunks or blobs from peers that failed verification (the peer was penalised)',
    registers: [this.registry],
  })

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'shoal_' })
  }
}
