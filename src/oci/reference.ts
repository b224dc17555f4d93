import { OciError } from './errors.js'
import { truncate } from './digest.js'

// Grammar from the OCI distribution spec.
const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*'
const NAME_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`)
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/
/** Registry host as runtimes name it: a hostname or IP with an optional port. */
const HOST_RE = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/

/** Clients cap host + name at 255 characters. */
export const MAX_NAME_LENGTH = 255

export function isValidName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME_RE.test(name)
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag)
}

export function isValidRegistryHost(host: string): boolean {
  return host.length <= 253 && HOST_RE.test(host)
}

export function assertName(name: string): void {
  if (!isValidName(name)) {
    throw new OciError(400, 'NAME_INVALID', `invalid repository name "${truncate(name)}"`)
  }
}

export function assertTag(tag: string): void {
  if (!isValidTag(tag)) {
    throw new OciError(400, 'TAG_INVALID', `invalid tag "${truncate(tag)}"`)
  }
}

/**
 * Whether a path segment names a registry host rather than a repository component:
 * Docker Hub namespaces never contain dots or colons, and `localhost` is a host by convention
 * (the same rule the Docker reference parser uses).
 */
export function looksLikeHost(segment: string): boolean {
  return segment.includes('.') || segment.includes(':') || segment === 'localhost'
}
