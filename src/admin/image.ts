import type { Logger } from 'pino'
import { isDigest, parseDigest } from '../oci/digest.js'
import { OciError } from '../oci/errors.js'
import { DEFAULT_MANIFEST_ACCEPT } from '../oci/media-types.js'
import { resolveTarget, type Target, type TargetRules } from '../registry/target.js'
import type { ManifestService } from '../transfer/manifest-service.js'

/** An image reference as `shoal pin` / `shoal prefetch` take it: `[registry/]name[:tag][@digest]`. */
export interface ImageRef {
  readonly target: Target
  /** tag or digest */
  readonly reference: string
  /** normalised text: `registry/name:tag` or `registry/name@digest` */
  readonly text: string
}

/** Everything an image (or one platform of it) is made of. */
export interface ImageContents {
  readonly ref: ImageRef
  /** the manifest digest the reference resolved to */
  readonly digest: string
  readonly manifests: string[]
  readonly blobs: { digest: string; size: number }[]
}

const MAX_INDEX_DEPTH = 3
const PLATFORM_RE = /^[a-z0-9]+\/[a-z0-9_]+(?:\/[a-z0-9]+)?$/i

export function parseImageRef(text: string, rules: TargetRules): ImageRef {
  let rest = text.trim()
  let reference: string | undefined
  const at = rest.indexOf('@')
  if (at !== -1) {
    reference = rest.slice(at + 1)
    rest = rest.slice(0, at)
    if (!isDigest(reference)) parseDigest(reference)
  }
  const slash = rest.lastIndexOf('/')
  const colon = rest.lastIndexOf(':')
  if (colon > slash) {
    const tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    reference ??= tag
  }
  reference ??= 'latest'
  if (rest === '') throw new OciError(400, 'NAME_INVALID', `"${text}" is not an image reference`)
  const target = resolveTarget(rest.split('/'), undefined, rules)
  const sep = isDigest(reference) ? '@' : ':'
  return { target, reference, text: `${target.registry}/${target.name}${sep}${reference}` }
}

export function checkPlatform(platform: string | undefined): string | undefined {
  if (platform === undefined || platform === '') return undefined
  if (!PLATFORM_RE.test(platform)) throw new OciError(400, 'UNSUPPORTED', `platform "${platform}" is not os/arch[/variant]`)
  return platform
}

interface Descriptor {
  digest?: unknown
  size?: unknown
  platform?: { os?: unknown; architecture?: unknown; variant?: unknown }
}

/**
 * Resolves an image through the manifest service (so its manifests land in the cache) and lists
 * its manifests and blobs: for an index, every child, or only the one for `platform`.
 */
export async function imageContents(
  manifests: ManifestService,
  ref: ImageRef,
  platform: string | undefined,
  signal: AbortSignal,
  log: Logger,
): Promise<ImageContents> {
  const out: ImageContents = { ref, digest: '', manifests: [], blobs: [] }
  const seen = new Set<string>()
  const walk = async (reference: string, depth: number): Promise<string> => {
    const m = await manifests.resolve(ref.target, reference, DEFAULT_MANIFEST_ACCEPT, 'GET', signal)
    if (seen.has(m.digest)) return m.digest
    seen.add(m.digest)
    out.manifests.push(m.digest)
    let doc: { manifests?: Descriptor[]; config?: Descriptor; layers?: Descriptor[] }
    try {
      doc = JSON.parse((m.bytes ?? Buffer.alloc(0)).toString('utf8'))
    } catch (err) {
      throw new OciError(502, 'MANIFEST_INVALID', `manifest ${m.digest} is not JSON`, { cause: err })
    }
    if (Array.isArray(doc.manifests)) {
      if (depth >= MAX_INDEX_DEPTH) throw new OciError(502, 'MANIFEST_INVALID', 'image indexes nested too deep')
      const children = doc.manifests.filter((d) => platform === undefined || matches(d, platform))
      if (children.length === 0) throw new OciError(404, 'MANIFEST_UNKNOWN', `${ref.text} has no manifest for platform ${platform}`)
      for (const child of children) {
        if (typeof child.digest === 'string' && isDigest(child.digest)) await walk(child.digest, depth + 1)
      }
      return m.digest
    }
    for (const d of [doc.config, ...(doc.layers ?? [])]) {
      if (d === undefined || typeof d.digest !== 'string' || !isDigest(d.digest)) continue
      if (out.blobs.some((b) => b.digest === d.digest)) continue
      out.blobs.push({ digest: d.digest, size: typeof d.size === 'number' ? d.size : -1 })
    }
    return m.digest
  }
  const digest = await walk(ref.reference, 0)
  log.debug({ ref: ref.text, manifests: out.manifests.length, blobs: out.blobs.length }, 'image resolved')
  return { ...out, digest }
}

function matches(d: Descriptor, platform: string): boolean {
  const [os, arch, variant] = platform.split('/')
  const p = d.platform
  if (p === undefined) return false
  return p.os === os && p.architecture === arch && (variant === undefined || p.variant === variant)
}
