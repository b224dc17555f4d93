/** What a node knows about a blob it can (partly) serve. */
export interface BlobInfo {
  /** blob size in bytes */
  size: number
  /** chunk size in bytes; chunk i covers [i*chunkSize, min(size, (i+1)*chunkSize)) */
  chunkSize: number
  /** per-chunk sha256 (64 lowercase hex characters; '' for a chunk not held), if this node knows the table */
  table?: string[]
  /** which chunks this node holds verified; length = ceil(size / chunkSize) */
  have: boolean[]
  /** bytes a download in progress received from origin so far (partial chunks too): a liveness signal */
  received?: number
  /**
   * Peer ids of other nodes that asked this node about the blob lately (peer exchange): they are
   * fetching it too, so the asker may take chunks from them (at most MAX_EXCHANGED_PEERS)
   */
  peers?: string[]
  /**
   * Peer ids this node knows nearest the blob's DHT key, its own included, nearest first (at
   * most MAX_NEAR_PEERS): named only to an asker choosing its origin fetchers (a `want` ask)
   */
  near?: string[]
}

/** The serving side: what a node can hand out. Implemented by the store/transfer layer. */
export interface ChunkProvider {
  /**
   * Blob info, or undefined when this node holds nothing of the blob. With `wait`: not before
   * this node holds more than `wait.held` chunks, unless `wait.signal` ends first (then as it is).
   */
  info(digest: string, wait?: { held: number; signal: AbortSignal }, asker?: string): Promise<BlobInfo | undefined>
  /**
   * The blob's size and chunk size, when this node holds any of it or has begun on it; no I/O:
   * asked before every chunk upload.
   */
  layout(digest: string): Pick<BlobInfo, 'size' | 'chunkSize'> | undefined
  /**
   * The verified bytes of chunk `index`; undefined when this node does not hold it verified.
   * The provider stops (rejects) when `signal` aborts. `release`, when given, is called once the
   * upload has ended (sent or not) and nothing reads `bytes` any more: a provider reusing its
   * buffers takes them back then.
   */
  read(digest: string, index: number, signal: AbortSignal): Promise<ChunkRead | undefined>
  /**
   * A peer asks this node to fetch the blob (from `source`, `registry/name`) as one of its origin
   * fetchers. Untrusted input: the provider validates it and may ignore it.
   */
  want?(digest: string, source: string, peerId: string): void
  /**
   * The answer to a `want` ask that is no long poll (the asker is choosing its origin fetchers):
   * `info`, naming `near`; for a blob this node has not begun on (its size unknown yet), no
   * chunks (size 0) and `near`. Without it, a `want` ask is answered as any other.
   */
  wantInfo?(digest: string, asker: string): Promise<BlobInfo | undefined>
}

/** A chunk on its way to a peer (see ChunkProvider.read). */
export interface ChunkRead {
  bytes: Buffer
  release?(): void
}

export interface PeerDataServerStats {
  /** chunk uploads in progress */
  uploads: number
  /** chunk body bytes written to peers since start */
  bytesSent: number
  /** chunk uploads started since start */
  uploadsTotal: number
  /** chunk requests answered 503 (upload cap) */
  rejectedBusy: number
  /** requests without a valid ticket (HTTP 401 or a failed TLS handshake) */
  rejectedUnauthorized: number
  ticketsIssued: number
  /** blob info answers (holdings asks and long polls) */
  infoAnswered: number
  /** their bodies' bytes (JSON, ASCII) */
  infoBytes: number
  /** tickets currently valid */
  tickets: number
}

export interface PeerDataServer {
  /** the data port (TCP) */
  readonly port: number
  readonly encrypt: boolean
  stats(): PeerDataServerStats
  /** unregister the ticket protocol, stop accepting, end connections; idempotent */
  close(): Promise<void>
}

export interface PeerDataClientStats {
  bytesReceived: number
  chunksFetched: number
  ticketsFetched: number
}
