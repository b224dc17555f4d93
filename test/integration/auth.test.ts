/**
 * Upstream auth against the real registry in token mode: the anonymous Bearer flow, token
 * caching per scope, Basic credentials at the token endpoint from the config file, and
 * credentials never appearing in logs.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { httpRequest, MEDIA_TYPES, type PushedImage, pushImage } from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { type Shoal, startShoal } from '../helpers/shoal.js'
import { startTokenServer, type TokenServer } from '../helpers/token-server.js'

const ACCEPT = [MEDIA_TYPES.ociManifest, MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerManifest].join(', ')

for (const mode of ['anonymous', 'basic'] as const) {
  describe(`upstream token flow (${mode})`, () => {
    const password = 's3cret-p4ss'
    let tokens: TokenServer
    let origin: OriginRegistry
    let shoal: Shoal
    let image: PushedImage
    let dir: string

    before(async () => {
      tokens = await startTokenServer(mode === 'basic' ? { basic: { username: 'robot', password } } : {})
      origin = await startOriginRegistry({ tokenAuth: tokens })
      const pushToken = tokens.issue(['repository:secure/app:pull,push'])
      image = await pushImage(origin.url, 'secure/app', 'v1', { layers: 2, layerSize: 50_000, format: 'oci', authorization: `Bearer ${pushToken}` })
      tokens.requests.length = 0
      dir = await mkdtemp(join(tmpdir(), 'shoal-auth-'))
      const config = join(dir, 'shoal.yaml')
      const creds = mode === 'basic' ? `credentials:\n  auth.test:\n    username: robot\n    passwordEnv: TEST_REGISTRY_PASSWORD\n` : ''
      await writeFile(config, `upstreams:\n  auth.test: ${origin.url}\n${creds}`)
      shoal = await startShoal({ args: ['--config', config], env: { TEST_REGISTRY_PASSWORD: password } })
    })

    after(async () => {
      await shoal?.close()
      await origin?.close()
      await tokens?.close()
      await rm(dir, { recursive: true, force: true })
    })

    test('pulls manifest and blobs through the challenge, one token per scope', async () => {
      const m = await httpRequest(`${shoal.url}/v2/secure/app/manifests/v1?ns=auth.test`, 'GET', { accept: ACCEPT })
      assert.equal(m.status, 200, m.body.toString())
      assert.deepEqual(m.body, image.manifest)
      for (const blob of [image.config, ...image.layers]) {
        const b = await httpRequest(`${shoal.url}/v2/secure/app/blobs/${blob.digest}?ns=auth.test`, 'GET', {})
        assert.equal(b.status, 200)
        assert.equal(b.body.length, blob.size)
      }
      const scopes = tokens.requests.map((r) => r.scope)
      assert.ok(scopes.length >= 1)
      for (const s of scopes) assert.equal(s, 'repository:secure/app:pull')
      assert.equal(scopes.length, 1, 'the token is cached and reused for every request of the scope')
      if (mode === 'basic') {
        const expected = `Basic ${Buffer.from(`robot:${password}`).toString('base64')}`
        assert.equal(tokens.requests[0]?.authorization, expected)
      } else {
        assert.equal(tokens.requests[0]?.authorization, null)
      }
    })

    test('credentials never appear in the log', async () => {
      const lines = await shoal.logs()
      const text = JSON.stringify(lines)
      assert.ok(!text.includes(password))
      assert.ok(!/Bearer [A-Za-z0-9_-]{20,}/.test(text))
      assert.ok(!text.toLowerCase().includes('authorization'))
    })
  })
}

describe('upstream auth failure', () => {
  let tokens: TokenServer
  let origin: OriginRegistry
  let shoal: Shoal
  before(async () => {
    tokens = await startTokenServer({ basic: { username: 'robot', password: 'right' } })
    origin = await startOriginRegistry({ tokenAuth: tokens })
    shoal = await startShoal({ upstreams: { 'auth.test': origin.url } })
  })
  after(async () => {
    await shoal?.close()
    await origin?.close()
    await tokens?.close()
  })

  test('refused credentials give a fast 5xx (the runtime falls back to origin), not a 500', async () => {
    const res = await httpRequest(`${shoal.url}/v2/secure/app/manifests/v1?ns=auth.test`, 'GET', { accept: ACCEPT })
    assert.equal(res.status, 502)
    assert.equal(JSON.parse(res.body.toString()).errors[0].code, 'DENIED')
  })
})
