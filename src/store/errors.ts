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
