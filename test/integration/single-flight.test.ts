/**
 * Single flight against the real origin: 20 concurrent GETs of one 100 MB blob make origin send
 * its bytes once (counted from origin's own access log), and every body hashes to the digest.
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { request } from 'node:http'
import { after, before, test } from 'node:test'
import { pushBlob } from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { type Shoal, startShoal } from '../helpers/shoal.js'

const SIZE = 100 * 1000 * 1000
const CLIENTS = 20

let origin: OriginRegistry
let shoal: Shoal
before(async () => {
  origin = await startOriginRegistry()
  shoal = await startShoal({ upstreams: { 'origin.test': origin.url } })
})
after(async () => {
  await shoal?.close()
  await origin?.close()
})

function hashGet(url: string): Promise<{ digest: string; bytes: number; firstByteMs: number }> {
  const t0 = Date.now()
  return new Promise((resolve, reject) => {
    const req = request(url, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}`))
      const hash = createHash('sha256')
      let bytes = 0
      let firstByteMs = -1
      res.on('data', (chunk: Buffer) => {
        if (firstByteMs < 0) firstByteMs = Date.now() - t0
        bytes += chunk.length
        hash.update(chunk)
      })
      res.on('end', () => resolve({ digest: `sha256:${hash.digest('hex')}`, bytes, firstByteMs }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

test(`${CLIENTS} concurrent GETs of a 100 MB blob: origin sends it once`, async () => {
  const blob = await pushBlob(origin.url, 'big/blob', 'single-flight', SIZE)
  const mark = origin.mark()
  const t0 = Date.now()
  const results = await Promise.all(
    Array.from({ length: CLIENTS }, () => hashGet(`${shoal.url}/v2/big/blob/blobs/${blob.digest}?ns=origin.test`)),
  )
  const seconds = (Date.now() - t0) / 1000
  for (const r of results) {
    assert.equal(r.bytes, SIZE)
    assert.equal(r.digest, blob.digest)
  }
  await origin.flush()
  const sent = origin.blobBytesSince(mark, blob.digest)
  assert.ok(sent <= SIZE * 1.05, `origin sent ${sent} bytes for a ${SIZE}-byte blob`)
  assert.ok(sent >= SIZE, 'origin log counted the blob')
  const blobRequests = origin.requestsSince(mark, (e) => e.method === 'GET' && e.path.includes('/blobs/'))
  assert.equal(blobRequests.length, 1)
  const status = await shoal.status()
  assert.equal((status.store as { blobs: number }).blobs, 1)
  console.log(`# ${CLIENTS} clients, ${SIZE / 1e6} MB: ${seconds.toFixed(2)} s, origin sent ${(sent / SIZE).toFixed(3)}× the blob, first byte p50 ${median(results.map((r) => r.firstByteMs))} ms`)
})

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] as number
}
