/** Origin answered, but not with what was asked for (4xx other than auth, or an unusable answer). */
export class OriginResponseError extends Error {
  readonly status: number
  readonly retryAfterMs: number | undefined
  constructor(status: number, message: string, options?: ErrorOptions & { retryAfterMs?: number }) {
    super(message, options)
    this.name = 'OriginResponseError'
    this.status = status
    this.retryAfterMs = options?.retryAfterMs
  }
}

/** Origin could not be reached, timed out, or kept failing with 5xx after the retries. */
export class OriginUnavailableError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'OriginUnavailableError'
  }
}

/** Origin refused our credentials (or has none for us). */
export class OriginAuthError extends Error {
  readonly status: number
  constructor(status: number, message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'OriginAuthError'
    this.status = status
  }
}
