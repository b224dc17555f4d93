/**
 * Errors of the peer data plane: a stable `code`, always built with `{ cause }` where there is
 * one. The scheduler tells "this peer cannot serve now" (`PeerBusyError`, `ChunkUnavailableError`)
 * from "this peer is broken or hostile" (`PeerProtocolError`) from "the peer is gone"
 * (`PeerUnreachableError`, `PeerTimeoutError`).
 */

export class PeerDataError extends Error {
  readonly code: string

  constructor(message: string, code: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'PeerDataError'
    this.code = code
  }
}

/**
 * No ticket could be obtained or the data port could not be reached. `refused`: no connection
 * could be made at all (a dial failed, the data port refused): the peer is most likely gone,
 * whereas a reset or a failed stream on a loaded peer is not proof of that.
 */
export class PeerUnreachableError extends PeerDataError {
  readonly refused: boolean

  constructor(message: string, options?: ErrorOptions & { refused?: boolean }) {
    super(message, 'ERR_PEER_UNREACHABLE', options)
    this.name = 'PeerUnreachableError'
    this.refused = options?.refused ?? false
  }
}

/** a network wait passed its deadline (ticket, connect, response headers, or an idle body) */
export class PeerTimeoutError extends PeerDataError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_PEER_TIMEOUT', options)
    this.name = 'PeerTimeoutError'
  }
}

/** the peer sent something that breaks the protocol (bad ticket, bad info, unexpected status) */
export class PeerProtocolError extends PeerDataError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_PEER_PROTOCOL', options)
    this.name = 'PeerProtocolError'
  }
}

/** this node requires encryption and the peer offers only plaintext */
export class PeerPolicyError extends PeerDataError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_PEER_POLICY', options)
    this.name = 'PeerPolicyError'
  }
}

/** the peer is at its upload cap (HTTP 503): try another peer or later */
export class PeerBusyError extends PeerDataError {
  readonly retryAfterMs: number | undefined

  constructor(peerId: string, retryAfterMs: number | undefined, options?: ErrorOptions) {
    super(`peer ${peerId} is at its upload cap`, 'ERR_PEER_BUSY', options)
    this.name = 'PeerBusyError'
    this.retryAfterMs = retryAfterMs
  }
}

/** the peer does not hold that chunk (or the blob) verified */
export class ChunkUnavailableError extends PeerDataError {
  constructor(peerId: string, digest: string, index: number, options?: ErrorOptions) {
    super(`peer ${peerId} does not hold chunk ${index} of ${digest}`, 'ERR_CHUNK_UNAVAILABLE', options)
    this.name = 'ChunkUnavailableError'
  }
}

/** the peer rejected the request with an unexpected HTTP status */
export class PeerHttpError extends PeerDataError {
  readonly status: number

  constructor(peerId: string, status: number, detail: string, options?: ErrorOptions) {
    super(`peer ${peerId} answered HTTP ${status}${detail === '' ? '' : `: ${detail}`}`, 'ERR_PEER_HTTP', options)
    this.name = 'PeerHttpError'
    this.status = status
  }
}

/** the client or server was closed while the operation ran */
export class PeerDataClosedError extends PeerDataError {
  constructor(what: string, options?: ErrorOptions) {
    super(`${what} closed`, 'ERR_PEER_DATA_CLOSED', options)
    this.name = 'PeerDataClosedError'
  }
}

/** invalid argument from the local caller (digest, index) */
export class PeerDataArgumentError extends PeerDataError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_PEER_DATA_ARGUMENT', options)
    this.name = 'PeerDataArgumentError'
  }
}
