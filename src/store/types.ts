/** A blob held complete and verified in the store. */
export interface BlobMeta {
  readonly digest: string
  readonly size: number
  readonly addedAt: number
  lastAccess: number
}

/** Per-chunk sha256 (hex) of a blob cut into `chunkSize` chunks. */
export interface ChunkTableRecord {
  readonly chunkSize: number
  readonly hashes: readonly string[]
}

/** A download that stopped before the end: its bytes stay in tmp/ and it resumes from there. */
export interface PartialMeta {
  readonly digest: string
  /** the blob's full size */
  readonly size: number
  /** bytes on disk (a checkpoint while it is being written) */
  written: number
  updatedAt: number
  /**
   * chunks were written out of order (peer downloads): bytes past `written` may be holes, so a
   * resume keeps only the first `written` bytes
   */
  sparse?: boolean
}

/** Manifest bytes exactly as origin served them, with origin's Content-Type. */
export interface ManifestRecord {
  readonly digest: string
  readonly mediaType: string
  readonly bytes: Buffer
}

/** A tag's answer from origin for one Accept set. */
export interface TagRecord {
  readonly digest: string
  readonly mediaType: string
  readonly size: number
  /** when origin last confirmed it (ms since epoch) */
  readonly checkedAt: number
}

/** What `shoal pin` keeps out of eviction: every manifest and blob of an image (or one platform). */
export interface PinRecord {
  /** the image reference as given, normalised: `registry/name:tag` or `registry/name@digest` */
  readonly ref: string
  /** `os/arch[/variant]`, or undefined for every platform */
  readonly platform: string | undefined
  readonly manifests: readonly string[]
  readonly blobs: readonly string[]
  readonly pinnedAt: number
}

export interface StoreUsage {
  /** bytes of complete blobs */
  readonly bytes: number
  readonly blobs: number
  readonly manifests: number
  readonly manifestBytes: number
  readonly tags: number
  /** partial downloads (active or waiting to resume) and the full sizes they reserve */
  readonly partials: number
  readonly partialBytes: number
  readonly pinnedBlobs: number
  /** the quota on blob bytes (complete + partial); null when there is none */
  readonly quotaBytes: number | null
  readonly highWatermarkBytes: number | null
  readonly lowWatermarkBytes: number | null
  readonly evictedBlobs: number
  readonly evictedBytes: number
}

export interface StoreOptions {
  /** absolute cap on blob bytes; 0 or undefined: none */
  maxBytes?: number
  /** cap on blob bytes as a percentage of the file system holding the data dir; 0 or undefined: none */
  maxPercent?: number
  /** eviction starts above this fraction of the quota (default 0.9) … */
  highWatermark?: number
  /** … and frees blobs until usage is below this fraction (default 0.8) */
  lowWatermark?: number
  /** cap on cached manifest bytes (default 256 MiB) */
  manifestMaxBytes?: number
  /** cap on cached tag answers (default 100,000) */
  maxTags?: number
  /** the file system's size and free bytes; default statfs(dataDir). Tests inject their own. */
  statfs?: (path: string) => Promise<{ total: number; free: number }>
}

export interface EvictionResult {
  readonly evicted: number
  readonly freedBytes: number
}

export interface VerifyResult {
  readonly checked: number
  readonly checkedBytes: number
  /** digests whose files were missing or did not hash to their digest (now dropped) */
  readonly bad: readonly string[]
}

/** What start-up found and repaired. */
export interface ReconcileReport {
  readonly blobs: number
  readonly droppedEntries: number
  readonly reindexedOrphans: number
  readonly removedOrphans: number
  readonly partials: number
  readonly removedTemp: number
  readonly ms: number
}
