import { OciError } from '../oci/errors.js'
import { assertName, isValidRegistryHost, looksLikeHost } from '../oci/reference.js'
import { truncate } from '../oci/digest.js'

export interface Target {
  /** the registry as the runtime names it (a configured upstream) */
  registry: string
  /** the repository name at that registry */
  name: string
  /** whether the request named the registry with `ns` (echoed as OCI-Namespace) */
  viaNs: boolean
}

export interface TargetRules {
  upstreams: ReadonlyMap<string, unknown>
  defaultRegistry: string
}

/**
 * Which upstream a /v2 request is for: the `ns` query parameter (containerd), else a first path
 * segment that names a registry host (CRI-O and podman mirrors: `/v2/docker.io/library/alpine/…`),
 * else the default registry (Docker Engine's registry-mirrors). Unconfigured registries are
 * refused: Shoal is no open proxy.
 */
export function resolveTarget(segments: string[], ns: string | undefined, rules: TargetRules): Target {
  let registry: string
  let parts = segments
  if (ns !== undefined) {
    if (!isValidRegistryHost(ns)) throw new OciError(400, 'NAME_INVALID', `invalid ns parameter "${truncate(ns)}"`)
    registry = ns
  } else if (segments.length >= 2 && looksLikeHost(segments[0] as string)) {
    registry = segments[0] as string
    parts = segments.slice(1)
  } else {
    registry = rules.defaultRegistry
  }
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = 'docker.io'
  if (!rules.upstreams.has(registry)) {
    throw new OciError(
      404,
      'NAME_UNKNOWN',
      `registry ${truncate(registry)} is not mirrored by this node; add it with --upstream ${truncate(registry)}=https://${truncate(registry)} (or upstreams: in the config file)`,
    )
  }
  let name = parts.join('/')
  assertName(name)
  if (registry === 'docker.io' && parts.length === 1) name = `library/${name}`
  return { registry, name, viaNs: ns !== undefined }
}
