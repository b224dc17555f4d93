/**
 * End-to-end (slow): real clients pulling through Shoal from a real origin.
 * - containerd (ctr with a hosts.toml mirror entry, as a node is configured) pulls and unpacks a
 *   multi-layer image; a second pull from a fresh containerd store sends no blob request to origin.
 * - skopeo copies through a CRI-O/podman registries.conf mirror, which uses the path-prefix form.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { type Containerd, ctrImages, ctrPull, startContainerd, writeHostsToml } from '../helpers/containerd.js'
import { type PushedImage, type PushedIndex, pushImage, pushIndex, hostPlatform } from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { type Shoal, startShoal } from '../helpers/shoal.js'
import { skopeoCopy, writeRegistriesConf } from '../helpers/skopeo.js'

describe('e2e: real clients through Shoal', () => {
  let origin: OriginRegistry
  let shoal: Shoal
  let image: PushedImage
  let legacy: PushedImage
  let multi: PushedIndex
  let dir: string
  const containerds: Containerd[] = []

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-e2e-'))
    origin = await startOriginRegistry()
    image = await pushImage(origin.url, 'demo/app', 'v1', { layers: 3, layerSize: 2_000_000, format: 'oci' })
    legacy = await pushImage(origin.url, 'demo/legacy', 'v1', { layers: 2, layerSize: 500_000, format: 'docker' })
    multi = await pushIndex(origin.url, 'demo/multi', 'v1', {
      platforms: [hostPlatform(), { os: 'linux', architecture: hostPlatform().architecture === 'arm64' ? 'amd64' : 'arm64' }],
      layers: 2,
      layerSize: 300_000,
    })
    shoal = await startShoal({ upstreams: { [origin.host]: origin.url, 'origin.test': origin.url } })
    await writeHostsToml(join(dir, 'hosts'), origin.host, shoal.url, { server: origin.url })
  })

  after(async () => {
    for (const c of containerds) await c.close()
    await shoal?.close()
    await origin?.close()
    await rm(dir, { recursive: true, force: true })
  })

  async function freshContainerd(): Promise<Containerd> {
    const c = await startContainerd()
    containerds.push(c)
    return c
  }

  test('containerd pulls and unpacks a multi-layer image through Shoal', async () => {
    const ctd = await freshContainerd()
    const mark = origin.mark()
    for (const img of [image, legacy, multi]) {
      await ctrPull(ctd, `${origin.host}/${img.name}:v1`, { hostsDir: join(dir, 'hosts') })
    }
    const images = await ctrImages(ctd)
    assert.ok(images.includes(`${origin.host}/demo/app:v1`), images.join(','))
    // every layer went through Shoal, fetched from origin
    const served = (await shoal.requests()).filter((l) => l.method === 'GET' && l.status === 200 && l.path?.includes('/blobs/'))
    for (const layer of image.layers) {
      const line = served.find((l) => l.path?.includes(layer.digest))
      assert.ok(line, `layer ${layer.digest} was served by Shoal`)
      assert.equal(line.source, 'origin')
      assert.equal(line.bytes, layer.size)
    }
    await origin.flush()
    assert.ok(origin.blobBytesSince(mark) > 0)
    // only Shoal talked to origin for blobs: each blob once
    const blobGets = origin.requestsSince(mark, (e) => e.method === 'GET' && e.path.includes('/blobs/'))
    const perDigest = new Map<string, number>()
    for (const e of blobGets) perDigest.set(e.path, (perDigest.get(e.path) ?? 0) + 1)
    for (const [path, n] of perDigest) assert.equal(n, 1, `${path} fetched ${n} times`)
  })

  test('a second pull from a fresh containerd store sends no blob request to origin', async () => {
    const ctd = await freshContainerd()
    const mark = origin.mark()
    const shoalMark = (await shoal.requests()).length
    await ctrPull(ctd, `${origin.host}/demo/app:v1`, { hostsDir: join(dir, 'hosts') })
    await origin.flush()
    const blobRequests = origin.requestsSince(mark, (e) => e.path.includes('/blobs/'))
    assert.deepEqual(blobRequests, [], 'origin saw no blob request')
    const lines = (await shoal.requests()).slice(shoalMark).filter((l) => l.path?.includes('/blobs/') && l.method === 'GET')
    assert.equal(lines.length, image.layers.length + 1)
    for (const l of lines) assert.equal(l.source, 'cache')
  })

  test('skopeo copies through a CRI-O style mirror (path prefix)', async () => {
    const conf = join(dir, 'registries.conf')
    const shoalHost = new URL(shoal.url).host
    // image names under the real origin host; the mirror spells the upstream as a path prefix
    await writeRegistriesConf(conf, [
      { prefix: origin.host, location: origin.host, insecure: true, mirrors: [{ location: `${shoalHost}/origin.test`, insecure: true }] },
    ])
    const shoalMark = (await shoal.requests()).length
    const out = join(dir, 'oci-out')
    await skopeoCopy(`docker://${origin.host}/demo/legacy:v1`, `oci:${out}:v1`, { registriesConf: conf })
    const lines = (await shoal.requests()).slice(shoalMark)
    const prefixed = lines.filter((l) => l.path?.startsWith('/v2/origin.test/demo/legacy/'))
    assert.ok(prefixed.some((l) => l.path?.includes('/manifests/') && l.status === 200), JSON.stringify(lines.map((l) => [l.path, l.status])))
    for (const layer of legacy.layers) {
      assert.ok(prefixed.some((l) => l.path?.includes(layer.digest) && l.status === 200), `layer ${layer.digest} through the prefix path`)
    }
  })
})
