import assert from 'node:assert/strict'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { describe, it } from 'node:test'
import { ThrottleStream, TokenBucket } from '../../src/peer/rate-limit.js'

describe('rate limits', () => {
  it('lets a burst through, then makes callers wait for the debt', () => {
    let now = 0
    const bucket = new TokenBucket({ rate: 1000, burst: 500, now: () => now })
    assert.equal(bucket.reserve(500), 0)
    assert.equal(bucket.reserve(250), 250, '250 bytes of debt at 1000 B/s')
    assert.equal(bucket.reserve(250), 500, 'debt accumulates across callers')
    now = 500
    assert.equal(bucket.reserve(0), 0)
    now = 10_000
    assert.equal(bucket.reserve(500), 0, 'refills up to the burst only')
    assert.equal(bucket.reserve(1), 1)
  })

  it('defaults the burst to a tenth of the rate, at least 64 KiB', () => {
    assert.equal(new TokenBucket({ rate: 10_000_000 }).burst, 1_000_000)
    assert.equal(new TokenBucket({ rate: 1000 }).burst, 64 * 1024)
    assert.throws(() => new TokenBucket({ rate: 0 }), RangeError)
    assert.throws(() => new TokenBucket({ rate: Number.NaN }), RangeError)
  })

  it('throttles a stream to the rate', async () => {
    const rate = 1_000_000
    const bucket = new TokenBucket({ rate, burst: 100_000 })
    const chunks = Array.from({ length: 30 }, () => Buffer.alloc(10_000))
    let received = 0
    const started = performance.now()
    await pipeline(
      Readable.from(chunks),
      new ThrottleStream(bucket),
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          received += chunk.length
          cb()
        }
      })
    )
    const ms = performance.now() - started
    assert.equal(received, 300_000)
    assert.ok(ms >= 190, `300 kB at 1 MB/s with a 100 kB burst took ${ms.toFixed(0)} ms`)
  })

  it('a receiver takes the bytes before it asks: it waits for the debt; an abort while waiting, or a refund, gives them back', async () => {
    let now = 0
    const bucket = new TokenBucket({ rate: 1000, burst: 100, now: () => now })
    await bucket.take(100, AbortSignal.timeout(1_000)) // the burst: at once
    const started = performance.now()
    await bucket.take(50, AbortSignal.timeout(1_000)) // 50 bytes of debt at 1000 B/s: 50 ms
    assert.ok(performance.now() - started >= 45, 'waited for the debt')
    const controller = new AbortController()
    const waiting = bucket.take(1000, controller.signal) // 1050 bytes of debt: a second
    controller.abort(new Error('given up'))
    await assert.rejects(waiting, /given up/)
    assert.equal(bucket.reserve(0), 50, 'the aborted take gave its 1000 bytes back: 50 bytes of debt left')
    bucket.refund(50)
    assert.equal(bucket.reserve(0), 0, 'and a refund pays the rest')
    now = 10_000
    bucket.refund(1_000_000)
    assert.equal(bucket.reserve(101), 1, 'a refund fills up to the burst only')
  })

  it('stops waiting when destroyed', async () => {
    const bucket = new TokenBucket({ rate: 1, burst: 1 })
    const throttle = new ThrottleStream(bucket)
    throttle.write(Buffer.alloc(1000))
    throttle.destroy()
    await new Promise((resolve) => throttle.once('close', resolve))
    assert.ok(throttle.destroyed)
  })
})
