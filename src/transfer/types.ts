import type { Readable } from 'node:stream'
import type { Digest } from '../oci/digest.js'

/** Which blob, and where a runtime asked for it (origin needs the repository for auth scope). */
export interface BlobLocator {
  readonly registry: string
  readonly name: string
  readonly digest: Digest
}

export interface SourceBody {
  /** total size of the blob */
  readonly size: number
  /** offset of the first byte of `body` (0 unless a resume offset was honoured) */
  readonly offset: number
  readonly body: Readable
}

/**
 * Somewhere blob bytes come from. Origin is one; peers will be others. A source only delivers
 * bytes: verification against the digest is the caller's job, whatever the source.
 */
export interface BlobSource {
  readonly kind: string
  /**
   * Opens the blob from `offset` (to its end, or for `length` bytes); rejects with an OciError
   * 404 BLOB_UNKNOWN if the source lacks it. A source may ignore the range and send everything
   * from 0 (`offset` in the answer says so).
   */
  open(locator: BlobLocator, options: { signal: AbortSignal; offset?: number; length?: number }): Promise<SourceBody>
  /** The blob's size, or undefined when the source does not have it. */
  stat(locator: BlobLocator, options: { signal: AbortSignal }): Promise<number | undefined>
}

/**
 * The body's bytes from blob offset `position` on (a source may have answered from an earlier
 * offset than asked: the bytes before `position` are dropped).
 */
export async function* bytesFrom(body: SourceBody, position: number): AsyncGenerator<Buffer> {
  let skip = position - body.offset
  for await (const chunk of body.body as AsyncIterable<Buffer>) {
    if (skip >= chunk.byteLength) {
      skip -= chunk.byteLength
      continue
    }
    yield skip > 0 ? chunk.subarray(skip) : chunk
    skip = 0
  }
}

/** Where the bytes of an answer came from, for logs and metrics. */
export type ByteSource = 'cache' | 'origin' | 'stale' | 'none'
