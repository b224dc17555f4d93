/** A blob held complete and verified in the store. */
export interface BlobMeta {
  readonly digest: string
  readonly size: number
  readonly addedAt: number
  lastAccess: number
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

export interface StoreUsage {
  readonly bytes: number
  readonly blobs: number
  readonly manifests: number
}
