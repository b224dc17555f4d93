/**
 * Rate limits: one token bucket (bytes/s) shared by every upload of a server, and one by every
 * download of a node (from peers and origin together). Callers reserve before they write, or
 * before they ask for bytes; a reservation may run the bucket into debt, and the caller waits
 * until the debt is paid back. Concurrent transfers therefore share the rate in proportion to
 * what they ask for, and a chunk never waits for more than `burst` worth of the others.
 */
import { Transform, type TransformCallback } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'

export interface TokenBucketOptions {
  /** bytes per second, > 0 */
  rate: number
  /** bucket capacity in bytes (default rate / 10, at least 64 KiB) */
  burst?: number
  /** ms clock (default performance.now) */
  now?: () => number
}

export class TokenBucket {
  readonly rate: number
  readonly burst: number
  private readonly now: () => number
  private tokens: number
  private last: number

  constructor(options: TokenBucketOptions) {
    if (!(options.rate > 0) || !Number.isFinite(options.rate)) throw new RangeError(`rate must be a positive number of bytes/s, got ${options.rate}`)
    this.rate = options.rate
    this.burst = Math.max(1, options.burst ?? Math.max(64 * 1024, options.rate / 10))
    this.now = options.now ?? (() => performance.now())
    this.tokens = this.burst
    this.last = this.now()
  }

  /** take `bytes` tokens; returns how long (ms) the caller must wait before sending them */
  reserve(bytes: number): number {
    const now = this.now()
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.rate) / 1000)
    this.last = now
    this.tokens -= bytes
    return this.tokens >= 0 ? 0 : (-this.tokens * 1000) / this.rate
  }

  /**
   * Waits until `bytes` may come in: what a receiver takes before it asks for them. Throttling
   * reads as they arrive caps nothing a sender already sent: a peer writes a whole chunk at
   * once, so what the requests in flight (8 by default) had been sent sat in the socket
   * buffers and was read at once, and a node capped at 4 MiB/s took a 16 MiB blob from a peer
   * in 1.9 s (test/integration/rate-caps.test.ts). An abort while waiting gives the bytes back.
   */
  async take(bytes: number, signal: AbortSignal): Promise<void> {
    const waitMs = this.reserve(bytes)
    if (waitMs < 1) return
    try {
      await sleep(waitMs, undefined, { signal })
    } catch (err) {
      this.refund(bytes)
      throw signal.aborted ? signal.reason : err
    }
  }

  /** gives back `bytes` taken but not received (a request refused, or given up before it was sent) */
  refund(bytes: number): void {
    this.tokens = Math.min(this.burst, this.tokens + bytes)
  }
}

/** a pass-through that holds each chunk until the bucket allows it */
export class ThrottleStream extends Transform {
  private readonly bucket: TokenBucket
  private timer: NodeJS.Timeout | undefined

  constructor(bucket: TokenBucket) {
    super()
    this.bucket = bucket
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const waitMs = this.bucket.reserve(chunk.length)
    if (waitMs < 1) {
      callback(null, chunk)
      return
    }
    this.timer = setTimeout(() => {
      this.timer = undefined
      callback(null, chunk)
    }, waitMs)
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    callback(err)
  }
}
