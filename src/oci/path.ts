import { OciError } from './errors.js'
import { truncate } from './digest.js'

export type V2Route =
  | { kind: 'base' }
  | { kind: 'manifest'; segments: string[]; reference: string }
  | { kind: 'blob'; segments: string[]; digest: string }
  | { kind: 'tags'; segments: string[] }
  | { kind: 'referrers'; segments: string[]; digest: string }

/**
 * Splits a /v2 request path into the repository segments and the endpoint.
 * Pure syntax: the registry host (a leading segment or `ns`) is resolved by the caller, and
 * names, tags and digests are validated there with the spec's grammar.
 *
 * Any percent-encoding is refused: nothing in the grammar needs it, and decoding would let
 * `%2F` or `%2E%2E` smuggle separators or traversal past the validation.
 */
export function parseV2Path(pathname: string): V2Route {
  if (pathname === '/v2/' || pathname === '/v2') return { kind: 'base' }
  if (!pathname.startsWith('/v2/')) throw notFound(pathname)
  if (pathname.includes('%')) {
    throw new OciError(400, 'NAME_INVALID', 'percent-encoded characters are not allowed in repository paths')
  }
  const parts = pathname.slice(4).split('/')
  if (parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new OciError(400, 'NAME_INVALID', `invalid repository path "${truncate(pathname)}"`)
  }
  const n = parts.length
  if (n >= 3) {
    const last = parts[n - 1] as string
    const kind = parts[n - 2] as string
    const segments = parts.slice(0, n - 2)
    switch (kind) {
      case 'manifests':
        return { kind: 'manifest', segments, reference: last }
      case 'blobs':
        if (last !== 'uploads') return { kind: 'blob', segments, digest: last }
        break
      case 'tags':
        if (last === 'list') return { kind: 'tags', segments }
        break
      case 'referrers':
        return { kind: 'referrers', segments, digest: last }
    }
  }
  throw notFound(pathname)
}

function notFound(pathname: string): OciError {
  return new OciError(404, 'UNSUPPORTED', `no such endpoint: ${truncate(pathname)}`)
}
