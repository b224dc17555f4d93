/**
 * OCI distribution error codes and the one error type that maps to an HTTP answer.
 * Every module throws its own errors; registry/errors.ts turns them into OCI error bodies.
 */
export type OciErrorCode =
  | 'BLOB_UNKNOWN'
  | 'DIGEST_INVALID'
  | 'MANIFEST_UNKNOWN'
  | 'MANIFEST_INVALID'
  | 'NAME_INVALID'
  | 'NAME_UNKNOWN'
  | 'TAG_INVALID'
  | 'RANGE_INVALID'
  | 'UNAUTHORIZED'
  | 'DENIED'
  | 'UNSUPPORTED'
  | 'TOOMANYREQUESTS'
  | 'UNAVAILABLE'
  | 'SIZE_INVALID'
  | 'UNKNOWN'

export interface OciErrorOptions extends ErrorOptions {
  detail?: unknown
  headers?: Record<string, string>
}

/** An error that is meant for the client, with the status and OCI code to answer with. */
export class OciError extends Error {
  readonly code: OciErrorCode
  readonly status: number
  readonly detail: unknown
  readonly headers: Record<string, string>

  constructor(status: number, code: OciErrorCode, message: string, options: OciErrorOptions = {}) {
    super(message, options)
    this.name = 'OciError'
    this.status = status
    this.code = code
    this.detail = options.detail
    this.headers = options.headers ?? {}
  }
}

export function ociErrorBody(code: OciErrorCode, message: string, detail?: unknown): string {
  return JSON.stringify({ errors: [{ code, message, detail: detail ?? null }] })
}

export function blobUnknown(registry: string, name: string, digest: string): OciError {
  return new OciError(404, 'BLOB_UNKNOWN', `blob ${digest} is unknown to ${registry}/${name}`)
}

export function manifestUnknown(registry: string, name: string, reference: string): OciError {
  return new OciError(404, 'MANIFEST_UNKNOWN', `manifest ${reference} is unknown to ${registry}/${name}`)
}
