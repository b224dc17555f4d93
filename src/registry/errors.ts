import { OciError, type OciErrorCode } from '../oci/errors.js'
import { OriginAuthError, OriginResponseError, OriginUnavailableError } from '../origin/errors.js'

export interface HttpError {
  status: number
  code: OciErrorCode
  message: string
  detail?: unknown
  headers: Record<string, string>
  /** the client is not at fault: worth a warning in the log */
  serverSide: boolean
}

/**
 * The one place where errors become HTTP answers. What a client sent gets a 4xx; what origin did
 * gets a 404 (it lacks the thing) or a 5xx, on which every runtime falls back to origin itself.
 */
export function toHttpError(err: unknown): HttpError {
  if (err instanceof OciError) {
    return { status: err.status, code: err.code, message: err.message, detail: err.detail, headers: err.headers, serverSide: err.status >= 500 }
  }
  if (err instanceof OriginResponseError) {
    if (err.status === 429) {
      const headers: Record<string, string> = {}
      if (err.retryAfterMs !== undefined) headers['retry-after'] = String(Math.ceil(err.retryAfterMs / 1000))
      return { status: 429, code: 'TOOMANYREQUESTS', message: err.message, headers, serverSide: true }
    }
    if (err.status === 404) return { status: 404, code: 'NAME_UNKNOWN', message: err.message, headers: {}, serverSide: false }
    return { status: 502, code: 'UNAVAILABLE', message: err.message, headers: {}, serverSide: true }
  }
  if (err instanceof OriginUnavailableError) {
    return { status: 503, code: 'UNAVAILABLE', message: err.message, headers: {}, serverSide: true }
  }
  if (err instanceof OriginAuthError) {
    return { status: 502, code: 'DENIED', message: err.message, headers: {}, serverSide: true }
  }
  const fastifyStatus = (err as { statusCode?: number })?.statusCode
  if (typeof fastifyStatus === 'number' && fastifyStatus >= 400 && fastifyStatus < 500) {
    return { status: fastifyStatus, code: 'UNSUPPORTED', message: (err as Error).message, headers: {}, serverSide: false }
  }
  return { status: 500, code: 'UNKNOWN', message: 'internal error', headers: {}, serverSide: true }
}
