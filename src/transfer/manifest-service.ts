import { createHash } from 'node:crypto'
import type { BlobSizes } from './blob-sizes.js'
import type { Logger } from 'pino'
import { type Digest, isDigest, parseDigest } from '../oci/digest.js'
import { manifestUnknown, OciError } from '../oci/errors.js'
import { DEFAULT_MANIFEST_ACCEPT, MAX_MANIFEST_BYTES } from '../oci/media-types.js'
import { header, type OriginClient, type OriginResponse } from '../origin/client.js'
import { OriginResponseError, OriginUnavailableError } from '../origin/errors.js'
import { abortable } from '../util/abort.js'
import type { BlobStore } from '../store/blob-store.js'
import type { ManifestRecord, TagRecord } from '../store/types.js'
import type { ByteSource } from './types.js'

export interface ManifestTarget {
  readonly registry: string
  readonly name: string
}

export interface ResolvedManifest {
  readonly digest: string
  readonly mediaType: string
  readonly size: number
  /** present for GET; HEAD may be answered from origin's headers alone */
  readonly bytes: Buffer | undefined
  readonly source: ByteSource
}

export interface ManifestServiceOptions {
  store: BlobStore
  origin: OriginClient
  logger: Logger
  tagTtlMs: number
  staleIfError: boolean
  /** the daemon's lifetime */
  signal: AbortSignal
  /** told the blob sizes of every image manifest served */
  sizes?: BlobSizes
}

/**
 * Manifests: by digest they are immutable, fetched once, verified and then served from the store.
 * Tags are resolved at origin with HEAD (Docker Hub does not count HEADs against its rate limit),
 * trusted for a short TTL, and served stale when origin cannot be reached.
 *
 * A tag can name different manifests for different Accept sets (distribution answers 404 for an
 * OCI manifest when Accept lacks the OCI type), so the tag cache is keyed by the Accept set too.
 */
export class ManifestService {
  private readonly opts: ManifestServiceOptions
  private readonly log: Logger
  private readonly pending = new Map<string, Promise<ManifestRecord>>()

  constructor(opts: ManifestServiceOptions) {
    this.opts = opts
    this.log = opts.logger
  }

  async resolve(
    target: ManifestTarget,
    reference: string,
    accept: string | undefined,
    method: 'GET' | 'HEAD',
    signal: AbortSignal,
  ): Promise<ResolvedManifest> {
    const resolved = await this.lookup(target, reference, normalizeAccept(accept), method, signal)
    this.opts.sizes?.noteManifest(resolved.digest, resolved.bytes)
    return resolved
  }

  private async lookup(target: ManifestTarget, reference: string, acceptSet: string, method: 'GET' | 'HEAD', signal: AbortSignal): Promise<ResolvedManifest> {
    if (isDigest(reference)) {
      const { record, source } = await this.byDigest(target, parseDigest(reference), acceptSet, signal)
      return { ...fromRecord(record), source }
    }
    const { tag, source } = await this.resolveTag(target, reference, acceptSet, signal)
    const stored = await this.opts.store.getManifest(tag.digest)
    if (stored !== undefined) return { ...fromRecord(stored), source }
    if (method === 'HEAD') return { digest: tag.digest, mediaType: tag.mediaType, size: tag.size, bytes: undefined, source }
    const { record } = await this.byDigest(target, parseDigest(tag.digest), acceptSet, signal)
    return { ...fromRecord(record), source: source === 'stale' ? 'stale' : 'origin' }
  }

  private async resolveTag(
    target: ManifestTarget,
    tag: string,
    acceptSet: string,
    signal: AbortSignal,
  ): Promise<{ tag: TagRecord; source: ByteSource }> {
    const { store, tagTtlMs, staleIfError } = this.opts
    const key = `${target.registry}/${target.name}:${tag}|${acceptSet}`
    const known = await store.getTag(key)
    if (known !== undefined && Date.now() - known.checkedAt < tagTtlMs) return { tag: known, source: 'cache' }
    try {
      const fresh = await this.headTag(target, tag, acceptSet, signal)
      await store.putTag(key, fresh)
      return { tag: fresh, source: 'origin' }
    } catch (err) {
      if (known !== undefined && staleIfError && isOriginDown(err) && !signal.aborted) {
        this.log.warn(
          { registry: target.registry, name: target.name, tag, digest: known.digest, err: (err as Error).message },
          'origin unavailable: serving last known tag (stale-if-error)',
        )
        return { tag: known, source: 'stale' }
      }
      throw err
    }
  }

  private async headTag(target: ManifestTarget, tag: string, acceptSet: string, signal: AbortSignal): Promise<TagRecord> {
    const res = await this.opts.origin.request({
      registry: target.registry,
      name: target.name,
      path: `manifests/${tag}`,
      method: 'HEAD',
      headers: { accept: acceptSet },
      signal,
    })
    await res.body.dump()
    if (res.status === 404) throw manifestUnknown(target.registry, target.name, tag)
    if (res.status === 405 || res.status === 200) {
      const digest = header(res.headers, 'docker-content-digest')
      const size = Number(header(res.headers, 'content-length'))
      const mediaType = header(res.headers, 'content-type')
      if (res.status === 200 && digest && isDigest(digest) && Number.isSafeInteger(size) && mediaType) {
        return { digest, mediaType, size, checkedAt: Date.now() }
      }
      // No usable digest header: fetch the manifest by tag and hash it.
      const record = await this.fetch(target, tag, undefined, acceptSet, signal)
      await this.opts.store.putManifest(record)
      return { digest: record.digest, mediaType: record.mediaType, size: record.bytes.length, checkedAt: Date.now() }
    }
    throw new OriginResponseError(res.status, `origin answered ${res.status} to HEAD manifest ${tag}`)
  }

  /** The manifest from the store, else from origin (verified against the digest, then stored). */
  private async byDigest(
    target: ManifestTarget,
    digest: Digest,
    acceptSet: string,
    signal: AbortSignal,
  ): Promise<{ record: ManifestRecord; source: ByteSource }> {
    const stored = await this.opts.store.getManifest(digest.value)
    if (stored !== undefined) return { record: stored, source: 'cache' }
    let inflight = this.pending.get(digest.value)
    if (inflight === undefined) {
      // Shared by every waiter: tied to the daemon's lifetime, not to the first caller.
      inflight = this.fetch(target, digest.value, digest, acceptSet, this.opts.signal)
        .then(async (record) => {
          await this.opts.store.putManifest(record)
          return record
        })
        .finally(() => this.pending.delete(digest.value))
      this.pending.set(digest.value, inflight)
    }
    return { record: await abortable(inflight, signal), source: 'origin' }
  }

  private async fetch(
    target: ManifestTarget,
    reference: string,
    expected: Digest | undefined,
    acceptSet: string,
    signal: AbortSignal,
  ): Promise<ManifestRecord> {
    const res = await this.opts.origin.request({
      registry: target.registry,
      name: target.name,
      path: `manifests/${reference}`,
      method: 'GET',
      headers: { accept: acceptSet },
      signal,
    })
    if (res.status === 404) {
      await res.body.dump()
      throw manifestUnknown(target.registry, target.name, reference)
    }
    if (res.status !== 200) {
      await res.body.dump()
      throw new OriginResponseError(res.status, `origin answered ${res.status} to GET manifest ${reference}`)
    }
    const mediaType = header(res.headers, 'content-type')
    const bytes = await readLimited(res, MAX_MANIFEST_BYTES)
    const algorithm = expected?.algorithm ?? 'sha256'
    const digest = `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`
    if (expected !== undefined && digest !== expected.value) {
      throw new OriginResponseError(502, `origin sent manifest bytes hashing to ${digest}, expected ${expected.value}`)
    }
    if (!mediaType) throw new OriginResponseError(502, 'origin sent a manifest without a Content-Type')
    return { digest, mediaType, bytes }
  }
}

function fromRecord(record: ManifestRecord): Omit<ResolvedManifest, 'source'> {
  return { digest: record.digest, mediaType: record.mediaType, size: record.bytes.length, bytes: record.bytes }
}

async function readLimited(res: OriginResponse, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let total = 0
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    total += chunk.length
    if (total > limit) {
      res.body.destroy()
      throw new OciError(502, 'SIZE_INVALID', `manifest larger than ${limit} bytes`)
    }
    chunks.push(chunk)
  }
  return Buffer.concat(chunks, total)
}

/** The Accept list as origin should see it; sorted so that equal sets share a cache entry. */
export function normalizeAccept(accept: string | undefined): string {
  if (!accept || accept.trim() === '') return DEFAULT_MANIFEST_ACCEPT
  const types = new Set<string>()
  for (const part of accept.split(',')) {
    const t = part.trim()
    if (t !== '') types.add(t)
  }
  return [...types].sort().join(', ')
}

function isOriginDown(err: unknown): boolean {
  if (err instanceof OriginUnavailableError) return true
  return err instanceof OriginResponseError && (err.status === 429 || err.status >= 500)
}
