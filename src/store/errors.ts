export class StoreError extends Error {
  readonly code: string
  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'StoreError'
    this.code = code
  }
}

/** Bytes did not hash to the digest they were stored under. */
export class DigestMismatchError extends StoreError {
  constructor(expected: string, actual: string) {
    super('DIGEST_MISMATCH', `content hashes to ${actual}, expected ${expected}`)
    this.name = 'DigestMismatchError'
  }
}

export class SizeMismatchError extends StoreError {
  constructor(expected: number, actual: number) {
    super('SIZE_MISMATCH', `received ${actual} bytes, expected ${expected}`)
    this.name = 'SizeMismatchError'
  }
}

export class StoreLockedError extends StoreError {
  constructor(dataDir: string, options?: ErrorOptions) {
    super('STORE_LOCKED', `data dir ${dataDir} is in use by another shoal process`, options)
    this.name = 'StoreLockedError'
  }
}

/**
 * The blob cannot be stored: it would pass the store's quota, or the disk is full (ENOSPC). The
 * caller streams it through from its source without caching.
 */
export class StoreFullError extends StoreError {
  constructor(message: string, options?: ErrorOptions) {
    super('STORE_FULL', message, options)
    this.name = 'StoreFullError'
  }
}

/** Whether a file-system error means "no space left" (disk full or quota). */
export function isNoSpace(err: unknown): boolean {
  const code = (err as { code?: string })?.code
  return code === 'ENOSPC' || code === 'EDQUOT'
}
