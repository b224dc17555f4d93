/**
 * The pull-through mirror against a real origin (distribution 2.8.2): every /v2 endpoint,
 * headers, ranges, caching, stale-if-error and bad input.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { request } from 'node:http'
import { connect } from 'node:net'
import { after, before, describe, test } from 'node:test'
import {
  httpRequest,
  MEDIA_TYPES,
  type PushedImage,
  type PushedIndex,
  pushBytesBlob,
  pushImage,
  pushIndex,
  sha256Digest,
} from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { type Shoal, startShoal } from '../helpers/shoal.js'

const ACCEPT_ALL = [MEDIA_TYPES.ociIndex, MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifestList, MEDIA_TYPES.dockerManifest, '*/*'].join(', ')
const REG = 'origin.test'

describe('pull-through mirror', () => {
  let origin: OriginRegistry
  let shoal: Shoal
  let oci: PushedImage
  let docker: PushedImage
  let index: PushedIndex
  let small: { digest: string; bytes: Buffer }
  let ranged: { digest: string; bytes: Buffer }

  const v2 = (path: string, ns = REG): string => `${shoal.url}/v2/${path}${ns ? `${path.includes('?') ? '&' : '?'}ns=${encodeURIComponent(ns)}` : ''}`

  before(async () => {
    origin = await startOriginRegistry()
    oci = await pushImage(origin.url, 'demo/app', 'v1', { layers: 2, layerSize: 200_000, format: 'oci' })
    docker = await pushImage(origin.url, 'demo/legacy', 'v1', { layers: 1, layerSize: 50_000, format: 'docker' })
    index = await pushIndex(origin.url, 'demo/multi', 'v1', {
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64' },
      ],
      layers: 1,
      layerSize: 10_000,
    })
    const smallBytes = randomBytes(100_000)
    small = { digest: (await pushBytesBlob(origin.url, 'demo/app', smallBytes)).digest, bytes: smallBytes }
    const rangedBytes = randomBytes(2048)
    ranged = { digest: (await pushBytesBlob(origin.url, 'demo/app', rangedBytes)).digest, bytes: rangedBytes }
    shoal = await startShoal({
      upstreams: { [REG]: origin.url, [origin.host]: origin.url },
      env: { SHOAL_MANIFESTS_TAG_TTL: '1s', SHOAL_ORIGIN_RETRIES: '1', SHOAL_ORIGIN_TIMEOUT: '3s' },
    })
  })

  after(async () => {
    await shoal?.close()
    await origin?.close()
  })

  test('GET /v2/ answers {} with the API version header; health, readiness and status', async () => {
    const res = await fetch(`${shoal.url}/v2/`)
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0')
    assert.deepEqual(await res.json(), {})
    assert.equal((await fetch(`${shoal.url}/healthz`)).status, 200)
    assert.equal((await fetch(`${shoal.url}/readyz`)).status, 200)
    const status = await shoal.status()
    assert.equal(typeof status.version, 'string')
    assert.equal(typeof status.uptimeSeconds, 'number')
    assert.equal(typeof (status.store as { bytes: number }).bytes, 'number')
    assert.equal(typeof (status.store as { blobs: number }).blobs, 'number')
    assert.equal((status.upstreams as Record<string, string>)[REG], `${origin.url}/`)
  })

  test('manifest by tag: HEAD and GET carry origin exact Content-Type, digest and length', async () => {
    for (const img of [oci, docker]) {
      const direct = await httpRequest(`${origin.url}/v2/${img.name}/manifests/v1`, 'HEAD', { accept: ACCEPT_ALL })
      const head = await httpRequest(v2(`${img.name}/manifests/v1`), 'HEAD', { accept: ACCEPT_ALL })
      assert.equal(head.status, 200)
      assert.equal(head.headers['content-type'], direct.headers['content-type'])
      assert.equal(head.headers['content-type'], img.mediaType)
      assert.equal(head.headers['docker-content-digest'], img.digest)
      assert.equal(head.headers['content-length'], String(img.manifest.length))
      assert.equal(head.headers['oci-namespace'], REG)
      const get = await httpRequest(v2(`${img.name}/manifests/v1`), 'GET', { accept: ACCEPT_ALL })
      assert.equal(get.status, 200)
      assert.deepEqual(get.body, img.manifest)
      assert.equal(get.headers['content-type'], img.mediaType)
      assert.equal(get.headers['docker-content-digest'], img.digest)
      assert.equal(get.headers['content-length'], String(img.manifest.length))
    }
  })

  test('an image index and its children, by digest', async () => {
    const get = await httpRequest(v2(`demo/multi/manifests/v1`), 'GET', { accept: ACCEPT_ALL })
    assert.equal(get.status, 200)
    assert.equal(get.headers['content-type'], MEDIA_TYPES.ociIndex)
    assert.deepEqual(get.body, index.manifest)
    for (const child of index.images) {
      const res = await httpRequest(v2(`demo/multi/manifests/${child.digest}`), 'GET', { accept: ACCEPT_ALL })
      assert.equal(res.status, 200)
      assert.equal(sha256Digest(res.body), child.digest)
      assert.equal(res.headers['content-type'], MEDIA_TYPES.ociManifest)
    }
  })

  test('the client Accept is forwarded: an OCI manifest asked for without the OCI type is unknown', async () => {
    const res = await httpRequest(v2('demo/app/manifests/v1'), 'GET', { accept: MEDIA_TYPES.dockerManifest })
    assert.equal(res.status, 404)
    assert.equal(JSON.parse(res.body.toString()).errors[0].code, 'MANIFEST_UNKNOWN')
  })

  test('CRI-O style path prefix and the default registry', async () => {
    const res = await httpRequest(`${shoal.url}/v2/${REG}/demo/app/manifests/v1`, 'GET', { accept: ACCEPT_ALL })
    assert.equal(res.status, 200)
    assert.deepEqual(res.body, oci.manifest)
    assert.equal(res.headers['oci-namespace'], undefined)
  })

  test('blobs: GET streams the exact bytes, HEAD gives the length, a second GET comes from the store', async () => {
    const layer = oci.layers[0]!
    const mark = origin.mark()
    const head = await httpRequest(v2(`demo/app/blobs/${layer.digest}`), 'HEAD', {})
    assert.equal(head.status, 200)
    assert.equal(head.headers['content-length'], String(layer.size))
    assert.equal(head.headers['docker-content-digest'], layer.digest)
    assert.equal(head.headers['content-encoding'], undefined)
    const get = await httpRequest(v2(`demo/app/blobs/${layer.digest}`), 'GET', {})
    assert.equal(get.status, 200)
    assert.equal(sha256Digest(get.body), layer.digest)
    assert.equal(get.headers['content-length'], String(layer.size))
    assert.equal(get.headers['content-encoding'], undefined)
    const again = await httpRequest(v2(`demo/app/blobs/${layer.digest}`), 'GET', {})
    assert.equal(sha256Digest(again.body), layer.digest)
    const headWarm = await httpRequest(v2(`demo/app/blobs/${layer.digest}`), 'HEAD', {})
    assert.equal(headWarm.headers['content-length'], String(layer.size))
    await origin.flush()
    assert.equal(origin.blobBytesSince(mark, layer.digest), layer.size, 'origin sent the blob once')
    const sources = (await shoal.requests()).filter((l) => l.path?.includes(layer.digest) && l.method === 'GET').map((l) => l.source)
    assert.deepEqual(sources, ['origin', 'cache'])
  })

  test('unknown blob and unknown manifest are 404 with their OCI codes', async () => {
    const missing = `sha256:${'0'.repeat(64)}`
    const blob = await httpRequest(v2(`demo/app/blobs/${missing}`), 'GET', {})
    assert.equal(blob.status, 404)
    assert.equal(JSON.parse(blob.body.toString()).errors[0].code, 'BLOB_UNKNOWN')
    const headBlob = await httpRequest(v2(`demo/app/blobs/${missing}`), 'HEAD', {})
    assert.equal(headBlob.status, 404)
    const manifest = await httpRequest(v2('demo/app/manifests/nope'), 'GET', { accept: ACCEPT_ALL })
    assert.equal(manifest.status, 404)
    assert.equal(JSON.parse(manifest.body.toString()).errors[0].code, 'MANIFEST_UNKNOWN')
    const byDigest = await httpRequest(v2(`demo/app/manifests/${missing}`), 'GET', { accept: ACCEPT_ALL })
    assert.equal(byDigest.status, 404)
  })

  describe('Range requests (RFC 9110, the conformance cases on a 2048-byte blob)', () => {
    const cases: [string, number, string | undefined, [number, number] | undefined][] = [
      ['bytes=500-1499', 206, 'bytes 500-1499/2048', [500, 1499]],
      ['bytes=500-', 206, 'bytes 500-2047/2048', [500, 2047]],
      ['bytes=-500', 206, 'bytes 1548-2047/2048', [1548, 2047]],
      ['bytes=2000-5000', 206, 'bytes 2000-2047/2048', [2000, 2047]],
      ['bytes=500-0', 416, 'bytes */2048', undefined],
      ['bytes=5000-10000', 416, 'bytes */2048', undefined],
    ]
    for (const round of ['cold', 'warm']) {
      for (const [range, status, contentRange, slice] of cases) {
        test(`${round}: ${range} → ${status}`, async () => {
          // the first request of the cold round is for a blob not yet held
          const res = await httpRequest(v2(`demo/app/blobs/${ranged.digest}`), 'GET', { range })
          assert.equal(res.status, status)
          assert.equal(res.headers['content-range'], contentRange)
          if (slice) {
            const expected = ranged.bytes.subarray(slice[0], slice[1] + 1)
            assert.equal(res.headers['content-length'], String(expected.length))
            assert.deepEqual(res.body, expected)
          } else {
            assert.equal(res.headers['content-length'], '0')
            assert.equal(res.body.length, 0)
          }
        })
      }
    }
  })

  test('tags/list and referrers pass through to origin', async () => {
    const tags = await httpRequest(v2('demo/app/tags/list'), 'GET', {})
    assert.equal(tags.status, 200)
    assert.deepEqual(JSON.parse(tags.body.toString()), { name: 'demo/app', tags: ['v1'] })
    const referrers = await httpRequest(v2(`demo/app/referrers/${oci.digest}`), 'GET', {})
    // distribution 2.8.2 has no referrers API: its answer (404) is passed through
    assert.equal(referrers.status, 404)
  })

  test('bad input gets the right 4xx with an OCI error body, and the daemon keeps serving', async () => {
    const hex = 'a'.repeat(64)
    const cases: [string, string, number, string | undefined][] = [
      ['GET', `/v2/Demo/App/manifests/v1?ns=${REG}`, 400, 'NAME_INVALID'],
      ['GET', `/v2/demo/app/manifests/bad:tag:x?ns=${REG}`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/demo/app/manifests/${'t'.repeat(200)}?ns=${REG}`, 400, 'TAG_INVALID'],
      ['GET', `/v2/demo/app/manifests/.hidden?ns=${REG}`, 400, 'TAG_INVALID'],
      ['GET', `/v2/demo/app/manifests/sha256:totallywrong?ns=${REG}`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/demo/../../etc/manifests/v1?ns=${REG}`, 400, 'NAME_INVALID'],
      ['GET', `/v2/demo/app/blobs/sha256:${hex.slice(2)}?ns=${REG}`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/demo/app/blobs/md5:${hex}?ns=${REG}`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/demo/app/blobs/${hex}?ns=${REG}`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/demo/app/referrers/nope?ns=${REG}`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/demo/%2e%2e/manifests/v1?ns=${REG}`, 400, 'NAME_INVALID'],
      ['GET', `/v2/demo%2Fapp/manifests/v1?ns=${REG}`, 400, 'NAME_INVALID'],
      ['GET', `/v2/demo//app/manifests/v1?ns=${REG}`, 400, 'NAME_INVALID'],
      ['GET', `/v2/${'a/'.repeat(200)}x/manifests/v1?ns=${REG}`, 400, 'NAME_INVALID'],
      ['GET', '/v2/demo/app/manifests/v1?ns=unknown.example.com', 404, 'NAME_UNKNOWN'],
      ['GET', '/v2/demo/app/manifests/v1?ns=not%20a%20host', 400, 'NAME_INVALID'],
      ['GET', '/v2/quay.io/x/y/manifests/v1?ns=evil.example.com', 404, 'NAME_UNKNOWN'],
      ['GET', '/v2/unknown.example.com/x/manifests/v1', 404, 'NAME_UNKNOWN'],
      ['GET', '/v2/demo/app/unknown/v1', 404, 'UNSUPPORTED'],
      ['GET', '/nothing-here', 404, 'UNSUPPORTED'],
      ['PUT', `/v2/demo/app/manifests/v1?ns=${REG}`, 405, 'UNSUPPORTED'],
      ['POST', `/v2/demo/app/blobs/uploads/?ns=${REG}`, 405, 'UNSUPPORTED'],
      ['DELETE', `/v2/demo/app/blobs/sha256:${hex}?ns=${REG}`, 405, 'UNSUPPORTED'],
    ]
    for (const [method, path, status, code] of cases) {
      // sent verbatim: client URL parsers would normalise dot segments and encodings away
      const res = await rawRequest(shoal.port, `${method} ${path} HTTP/1.1\r\nHost: x\r\nAccept: ${ACCEPT_ALL}\r\nConnection: close\r\n\r\n`)
      const [head = '', body = ''] = res.split('\r\n\r\n')
      assert.match(head, new RegExp(`^HTTP/1\\.1 ${status} `), `${method} ${path}: ${res}`)
      if (code) assert.equal(JSON.parse(body).errors[0].code, code, `${method} ${path}`)
    }
    // oversized request headers: Node's parser answers 431 before anything else runs
    const big = await rawRequest(shoal.port, `GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(64 * 1024)}\r\n\r\n`)
    assert.match(big, /^HTTP\/1\.1 431/)
    // a malformed request line
    const garbage = await rawRequest(shoal.port, 'NOT HTTP AT ALL\r\n\r\n')
    assert.match(garbage, /^HTTP\/1\.1 400/)
    // a Range header that is garbage is ignored, not an error
    const weird = await httpRequest(v2(`demo/app/blobs/${small.digest}`), 'GET', { range: 'bytes=zzz' })
    assert.equal(weird.status, 200)
    assert.equal(sha256Digest(weird.body), small.digest)
    // still serving, and no 5xx anywhere in the log
    assert.equal((await fetch(`${shoal.url}/healthz`)).status, 200)
    const fiveHundreds = (await shoal.requests()).filter((l) => (l.status ?? 0) >= 500)
    assert.deepEqual(fiveHundreds, [])
  })

  test('a client hanging up mid-blob does not break the download for others', async () => {
    const bytes = randomBytes(8 * 1024 * 1024)
    const blob = await pushBytesBlob(origin.url, 'demo/app', bytes)
    await new Promise<void>((resolve, reject) => {
      const req = request(v2(`demo/app/blobs/${blob.digest}`), (res) => {
        res.once('data', () => {
          req.destroy()
          resolve()
        })
      })
      req.on('error', () => {})
      req.once('error', reject)
      req.end()
    })
    const res = await httpRequest(v2(`demo/app/blobs/${blob.digest}`), 'GET', {})
    assert.equal(sha256Digest(res.body), blob.digest)
  })

  test('logs carry one line per request with source and bytes, and never credentials', async () => {
    const lines = await shoal.requests()
    const blobLine = lines.find((l) => l.path?.includes(oci.layers[0]!.digest) && l.method === 'GET')
    assert.ok(blobLine)
    assert.equal(blobLine.status, 200)
    assert.equal(blobLine.bytes, oci.layers[0]!.size)
    assert.ok(typeof blobLine.ms === 'number')
    const metrics = await shoal.metrics()
    assert.match(metrics, /shoal_registry_served_bytes_total\{source="cache"\} \d+/)
    assert.match(metrics, /shoal_transfer_fetched_bytes_total\{source="origin"\} \d+/)
  })

  test('stale-if-error: with origin down, manifests by digest and the last known tags are still served', async () => {
    // warm the tag, the manifest and one blob
    const warm = await httpRequest(v2('demo/app/manifests/v1'), 'GET', { accept: ACCEPT_ALL })
    assert.equal(warm.status, 200)
    await origin.stop()
    try {
      await new Promise((r) => setTimeout(r, 1200)) // past the 1 s tag TTL
      const t0 = Date.now()
      const byTag = await httpRequest(v2('demo/app/manifests/v1'), 'GET', { accept: ACCEPT_ALL })
      assert.equal(byTag.status, 200)
      assert.deepEqual(byTag.body, oci.manifest)
      assert.ok(Date.now() - t0 < 3000, 'stale answer comes fast')
      const headByTag = await httpRequest(v2('demo/app/manifests/v1'), 'HEAD', { accept: ACCEPT_ALL })
      assert.equal(headByTag.headers['docker-content-digest'], oci.digest)
      const byDigest = await httpRequest(v2(`demo/app/manifests/${oci.digest}`), 'GET', { accept: ACCEPT_ALL })
      assert.equal(byDigest.status, 200)
      const blob = await httpRequest(v2(`demo/app/blobs/${oci.layers[0]!.digest}`), 'GET', {})
      assert.equal(sha256Digest(blob.body), oci.layers[0]!.digest)
      const stale = (await shoal.logs()).filter((l) => /stale-if-error/.test(l.msg))
      assert.ok(stale.length > 0, 'the log says a stale tag was served')
      // never seen tag, origin down: a fast 5xx so the runtime falls back to origin itself
      const unknown = await httpRequest(v2('demo/app/manifests/never-seen'), 'GET', { accept: ACCEPT_ALL })
      assert.ok(unknown.status >= 500 && unknown.status < 600, `got ${unknown.status}`)
      assert.equal(JSON.parse(unknown.body.toString()).errors[0].code, 'UNAVAILABLE')
    } finally {
      await origin.start()
    }
  })
})

function rawRequest(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let out = ''
    socket.setTimeout(5000, () => socket.destroy(new Error('timeout')))
    socket.on('data', (d) => {
      out += d.toString('latin1')
    })
    socket.on('close', () => resolve(out))
    socket.on('error', (err) => (out ? resolve(out) : reject(err)))
    socket.write(text)
  })
}

