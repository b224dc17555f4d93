/**
 * Proves the origin-registry harness: a real distribution 2.8.2, pushes, log accounting,
 * restarts, indexes and the token-auth mode.
 */
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { gunzipSync } from 'node:zlib'
import {
  MEDIA_TYPES,
  type PushedImage,
  httpRequest,
  pushBlob,
  pushImage,
  pushIndex,
  randomBlobDigest,
  randomBlobStream,
  sha256Digest,
} from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { type TokenServer, startTokenServer } from '../helpers/token-server.js'

const ACCEPT_ALL = [
  MEDIA_TYPES.ociManifest,
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.dockerManifest,
  MEDIA_TYPES.dockerManifestList,
].join(', ')

describe('origin registry harness', () => {
  let origin: OriginRegistry
  let image: PushedImage

  before(async () => {
    origin = await startOriginRegistry()
    image = await pushImage(origin.url, 'harness/app', 'v1', { layers: 2, layerSize: 100_000, format: 'oci' })
  })

  after(async () => {
    await origin?.close()
  })

  test('GET manifest gives back the pushed bytes', async () => {
    const res = await httpRequest(`${origin.url}/v2/harness/app/manifests/v1`, 'GET', { accept: ACCEPT_ALL })
    assert.equal(res.status, 200)
    assert.equal(res.headers['content-type'], MEDIA_TYPES.ociManifest)
    assert.equal(res.headers['docker-content-digest'], image.digest)
    assert.equal(sha256Digest(res.body), image.digest)
    assert.deepEqual(res.body, image.manifest)
  })

  test('layers are gzip tars whose diff_ids are in the config', async () => {
    const config = await httpRequest(`${origin.url}/v2/harness/app/blobs/${image.config.digest}`, 'GET', {})
    const diffIds = JSON.parse(config.body.toString()).rootfs.diff_ids as string[]
    assert.equal(diffIds.length, 2)
    for (const [i, layer] of image.layers.entries()) {
      const res = await httpRequest(`${origin.url}/v2/harness/app/blobs/${layer.digest}`, 'GET', {})
      assert.equal(res.body.length, layer.size)
      assert.equal(sha256Digest(res.body), layer.digest)
      const tar = gunzipSync(res.body)
      assert.equal(sha256Digest(tar), diffIds[i])
      assert.equal(tar.subarray(257, 262).toString(), 'ustar')
      assert.equal(Number.parseInt(tar.subarray(124, 135).toString(), 8), layer.fileSize)
      const content = tar.subarray(512, 512 + layer.fileSize)
      const expected = await streamToBuffer(randomBlobStream(layer.seed, layer.fileSize))
      assert.deepEqual(content, expected)
    }
  })

  test('blobBytesSince counts GET bytes exactly, HEAD as 0, Range as the range', async () => {
    const layer = image.layers[0]!
    const blobUrl = `${origin.url}/v2/harness/app/blobs/${layer.digest}`
    const mark = origin.mark()
    await httpRequest(blobUrl, 'GET', {})
    await origin.flush()
    assert.equal(origin.blobBytesSince(mark, layer.digest), layer.size)
    assert.equal(origin.blobBytesSince(mark), layer.size)
    assert.equal(origin.blobBytesSince(mark, image.layers[1]!.digest), 0)

    const mark2 = origin.mark()
    const head = await httpRequest(blobUrl, 'HEAD', {})
    assert.equal(head.status, 200)
    const range = await httpRequest(blobUrl, 'GET', { range: 'bytes=100-1099' })
    assert.equal(range.status, 206)
    assert.equal(range.body.length, 1000)
    // distribution 2.8.2 answers 416 with the blob's Content-Length and a 33-byte body, then
    // cuts the connection: the client sees a reset, the access log a 416
    await httpRequest(blobUrl, 'GET', { range: `bytes=${layer.size + 10}-` }).catch(() => null)
    await origin.flush()
    assert.equal(origin.blobBytesSince(mark2, layer.digest), 1000)
    const seen = origin.requestsSince(mark2).map((e) => `${e.method} ${e.status} ${e.bytes}`)
    // a 416 is only in the access log (no JSON line): it must still be seen
    assert.deepEqual(seen, ['HEAD 200 0', 'GET 206 1000', 'GET 416 33'])
    assert.equal(origin.requestsSince(mark2, (e) => e.method === 'HEAD').length, 1)
  })

  test('a raw random blob streams with the digest computed up front', async () => {
    const size = 3 * 1024 * 1024 + 17
    const blob = await pushBlob(origin.url, 'harness/big', 'big-seed', size)
    assert.equal(blob.digest, await randomBlobDigest('big-seed', size))
    const mark = origin.mark()
    const res = await httpRequest(`${origin.url}/v2/harness/big/blobs/${blob.digest}`, 'GET', {})
    assert.equal(sha256Digest(res.body), blob.digest)
    await origin.flush()
    assert.equal(origin.blobBytesSince(mark, blob.digest), size)
    // pushing it again finds it and skips the upload
    const again = origin.mark()
    await pushBlob(origin.url, 'harness/big', 'big-seed', size)
    await origin.flush()
    assert.deepEqual(
      origin.requestsSince(again).map((e) => e.method),
      ['HEAD'],
    )
  })

  test('a docker schema2 image', async () => {
    const docker = await pushImage(origin.url, 'harness/docker', 'v1', { layers: 1, layerSize: 1000, format: 'docker' })
    const res = await httpRequest(`${origin.url}/v2/harness/docker/manifests/v1`, 'GET', { accept: ACCEPT_ALL })
    assert.equal(res.headers['content-type'], MEDIA_TYPES.dockerManifest)
    assert.equal(res.headers['docker-content-digest'], docker.digest)
    assert.equal(docker.layers[0]!.mediaType, MEDIA_TYPES.dockerLayer)
  })

  test('restart keeps the content and the log', async () => {
    const before = origin.log().length
    await origin.stop()
    await origin.stop()
    const down = await httpRequest(`${origin.url}/v2/`, 'GET', {}).catch((err: Error) => err)
    assert.ok(down instanceof Error)
    await origin.start()
    const res = await httpRequest(`${origin.url}/v2/harness/app/manifests/${image.digest}`, 'GET', { accept: ACCEPT_ALL })
    assert.equal(res.status, 200)
    assert.deepEqual(res.body, image.manifest)
    await origin.flush()
    assert.equal(origin.log().length, before + 1)
  })

  test('pushIndex pushes an OCI index of per-platform OCI manifests', async () => {
    const platforms = [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
    ]
    const index = await pushIndex(origin.url, 'harness/multi', 'latest', { platforms, layers: 1, layerSize: 2000 })
    const res = await httpRequest(`${origin.url}/v2/harness/multi/manifests/latest`, 'GET', { accept: ACCEPT_ALL })
    assert.equal(res.headers['content-type'], MEDIA_TYPES.ociIndex)
    assert.equal(res.headers['docker-content-digest'], index.digest)
    const parsed = JSON.parse(res.body.toString())
    assert.deepEqual(
      parsed.manifests.map((m: { platform: unknown }) => m.platform),
      platforms,
    )
    assert.notEqual(index.images[0]!.digest, index.images[1]!.digest)
    for (const child of index.images) {
      const c = await httpRequest(`${origin.url}/v2/harness/multi/manifests/${child.digest}`, 'GET', { accept: ACCEPT_ALL })
      assert.equal(c.status, 200)
      assert.deepEqual(c.body, child.manifest)
    }
  })
})

describe('origin registry with token auth', () => {
  let tokens: TokenServer
  let origin: OriginRegistry

  before(async () => {
    tokens = await startTokenServer()
    origin = await startOriginRegistry({ tokenAuth: tokens })
  })

  after(async () => {
    await origin?.close()
    await tokens?.close()
  })

  test('anonymous gets a Bearer challenge, a token from the realm works', async () => {
    const anon = await httpRequest(`${origin.url}/v2/`, 'GET', {})
    assert.equal(anon.status, 401)
    const challenge = String(anon.headers['www-authenticate'])
    assert.match(challenge, /^Bearer /)
    assert.ok(challenge.includes(`realm="${tokens.realm}"`), challenge)
    assert.ok(challenge.includes(`service="${tokens.service}"`), challenge)

    const scope = 'repository:secure/app:pull,push'
    const res = await httpRequest(`${tokens.realm}?service=${tokens.service}&scope=${encodeURIComponent(scope)}`, 'GET', {})
    assert.equal(res.status, 200)
    const body = JSON.parse(res.body.toString())
    assert.equal(body.token, body.access_token)
    assert.equal(typeof body.expires_in, 'number')
    assert.deepEqual(tokens.requests.at(-1), { scope, service: tokens.service, authorization: null })
    const authorization = `Bearer ${body.token}`

    const ok = await httpRequest(`${origin.url}/v2/`, 'GET', { authorization })
    assert.equal(ok.status, 200)

    const pushed = await pushImage(origin.url, 'secure/app', 'v1', { layers: 1, layerSize: 1000, format: 'oci', authorization })
    const denied = await httpRequest(`${origin.url}/v2/secure/app/manifests/v1`, 'GET', { accept: ACCEPT_ALL })
    assert.equal(denied.status, 401)
    assert.match(String(denied.headers['www-authenticate']), /scope="repository:secure\/app:pull"/)
    const got = await httpRequest(`${origin.url}/v2/secure/app/manifests/v1`, 'GET', { accept: ACCEPT_ALL, authorization })
    assert.equal(got.status, 200)
    assert.equal(got.headers['docker-content-digest'], pushed.digest)

    // a token for another repository does not open this one
    const other = `Bearer ${tokens.issue(['repository:other/app:pull'])}`
    const wrong = await httpRequest(`${origin.url}/v2/secure/app/manifests/v1`, 'GET', { accept: ACCEPT_ALL, authorization: other })
    assert.equal(wrong.status, 401)
    await origin.flush()
    assert.ok(origin.log().some((e) => e.status === 401))
  })

  test('a realm with Basic credentials refuses anonymous requests', async () => {
    const basic = await startTokenServer({ basic: { username: 'alice', password: 's3cret' } })
    try {
      const anon = await httpRequest(`${basic.realm}?service=${basic.service}`, 'GET', {})
      assert.equal(anon.status, 401)
      const creds = `Basic ${Buffer.from('alice:s3cret').toString('base64')}`
      const ok = await httpRequest(`${basic.realm}?service=${basic.service}`, 'GET', { authorization: creds })
      assert.equal(ok.status, 200)
      assert.deepEqual(
        basic.requests.map((r) => r.authorization),
        [null, creds],
      )
    } finally {
      await basic.close()
    }
  })
})

async function streamToBuffer(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk)
  return Buffer.concat(chunks)
}

