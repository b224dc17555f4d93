import { createHash, type Hash } from 'node:crypto'
import { OciError } from './errors.js'

/** A validated content digest: `algorithm:encoded`. Only sha256 and sha512 are accepted. */
export interface Digest {
  readonly algorithm: 'sha256' | 'sha512'
  readonly hex: string
  readonly value: string
}

const DIGEST_RE = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/
const ANY_DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/

export function isDigest(value: string): boolean {
  return DIGEST_RE.test(value)
}

/** Looks like a digest reference (has a colon), valid or not: used to pick tag vs digest. */
export function looksLikeDigest(value: string): boolean {
  return value.includes(':')
}

export function parseDigest(value: string): Digest {
  if (!DIGEST_RE.test(value)) {
    const why = ANY_DIGEST_RE.test(value) ? 'unsupported digest algorithm or bad length' : 'malformed digest'
    throw new OciError(400, 'DIGEST_INVALID', `invalid digest "${truncate(value)}": ${why}`)
  }
  const colon = value.indexOf(':')
  return {
    algorithm: value.slice(0, colon) as Digest['algorithm'],
    hex: value.slice(colon + 1),
    value,
  }
}

export function digestHasher(digest: Digest): Hash {
  return createHash(digest.algorithm)
}

export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

export function digestOf(algorithm: Digest['algorithm'], bytes: Uint8Array): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`
}

export function truncate(value: string, max = 80): string {
  return value.length > max ? `${value.slice(0, max)}…` : value
}
