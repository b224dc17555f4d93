import { blobUnknown } from '../oci/errors.js'
import type { BlobLocator, BlobSource, SourceBody } from '../transfer/types.js'
import { header, type OriginClient } from './client.js'
import { OriginResponseError } from './errors.js'

const CONTENT_RANGE_RE = /^bytes (\d+)-(\d+)\/(\d+)$/

/** The origin registry as a source of blob bytes. */
export class OriginBlobSource implements BlobSource {
  readonly kind = 'origin'
  private readonly client: OriginClient

  constructor(client: OriginClient) {
    this.client = client
  }

  async open(locator: BlobLocator, options: { signal: AbortSignal; offset?: number; length?: number }): Promise<SourceBody> {
    const offset = options.offset ?? 0
    const ranged = offset > 0 || options.length !== undefined
    const last = options.length !== undefined ? `${offset + options.length - 1}` : ''
    const res = await this.client.request({
      registry: locator.registry,
      name: locator.name,
      path: `blobs/${locator.digest.value}`,
      method: 'GET',
      headers: ranged ? { range: `bytes=${offset}-${last}` } : {},
      signal: options.signal,
    })
    if (res.status === 404) {
      await res.body.dump()
      throw blobUnknown(locator.registry, locator.name, locator.digest.value)
    }
    if (res.status === 206 && ranged) {
      const m = CONTENT_RANGE_RE.exec(header(res.headers, 'content-range') ?? '')
      if (m === null || Number(m[1]) !== offset) {
        await res.body.dump()
        throw new OriginResponseError(502, 'origin answered a range request with a bad Content-Range')
      }
      return { size: Number(m[3]), offset, body: res.body }
    }
    if (res.status !== 200) {
      await res.body.dump()
      throw new OriginResponseError(res.status, `origin answered ${res.status} for blob ${locator.digest.value}`)
    }
    const size = Number(header(res.headers, 'content-length'))
    if (!Number.isSafeInteger(size) || size < 0) {
      await res.body.dump()
      throw new OriginResponseError(502, 'origin sent a blob without a Content-Length')
    }
    return { size, offset: 0, body: res.body }
  }

  async stat(locator: BlobLocator, options: { signal: AbortSignal }): Promise<number | undefined> {
    const res = await this.client.request({
      registry: locator.registry,
      name: locator.name,
      path: `blobs/${locator.digest.value}`,
      method: 'HEAD',
      signal: options.signal,
    })
    await res.body.dump()
    if (res.status === 404) return undefined
    const size = Number(header(res.headers, 'content-length'))
    if (res.status !== 200 || !Number.isSafeInteger(size)) {
      throw new OriginResponseError(res.status === 200 ? 502 : res.status, `origin answered ${res.status} to HEAD blob`)
    }
    return size
  }
}
