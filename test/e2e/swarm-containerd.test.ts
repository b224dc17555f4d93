/**
 * End-to-end on two nodes: node A's Shoal holds an image (pulled over plain HTTP); containerd on
 * node B pulls it through B's Shoal (hosts.toml mirror, as a node is configured), and the layers
 * come from A: origin sees no blob request for B's pull, B's status counts the bytes from peers.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { type Containerd, ctrImages, ctrPull, startContainerd, writeHostsToml } from '../helpers/containerd.js'
import { type PushedImage, pushImage } from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { type Fleet, fetchedBytes, logTail, pullImage, startFleet, waitAnnounced, waitJoined } from '../helpers/swarm.js'

const MiB = 1024 * 1024

describe('e2e: containerd on node B pulls through B, the layers come from node A', { timeout: 60_000 }, () => {
  let origin: OriginRegistry
  let fleet: Fleet
  let image: PushedImage
  let ctd: Containerd | undefined
  let dir: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-e2e-swarm-'))
    origin = await startOriginRegistry()
    image = await pushImage(origin.url, 'swarm/e2e', 'v1', { layers: 3, layerSize: 3 * MiB, format: 'oci' })
    // the runtime names the registry by origin's host:port; both nodes map it to origin. A starts
    // alone and B joins once A holds the image (with B around while A pulls, B could be asked to
    // fetch a share of each blob from origin as one of its origin fetchers)
    fleet = await startFleet(1, { upstreams: { [origin.host]: origin.url }, logLevel: 'debug' })
  })

  after(async () => {
    await ctd?.close()
    await fleet?.close()
    await origin?.close()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  test('ctr pull on B: every layer from A, no blob request to origin', async () => {
    const a = fleet.nodes[0]!
    const blobs = [image.config, ...image.layers]
    const total = blobs.reduce((sum, blob) => sum + blob.size, 0)

    await pullImage(a, origin.host, image)
    const b = await fleet.add()
    await waitJoined([a, b])
    await waitAnnounced(a, blobs.map((blob) => blob.digest))

    ctd = await startContainerd()
    const hostsDir = join(dir, 'hosts')
    await writeHostsToml(hostsDir, origin.host, b.url, { server: origin.url })
    const mark = origin.mark()
    const ref = `${origin.host}/${image.name}:${image.tag}`
    await ctrPull(ctd, ref, { hostsDir })
    assert.ok((await ctrImages(ctd)).includes(ref), 'containerd has the image')
    await origin.flush()

    const blobRequests = origin.requestsSince(mark, (e) => e.path.includes('/blobs/'))
    const p2p = await b.p2p()
    const detail = `B: ${JSON.stringify(p2p)}\n${await logTail(b, 20, (m) => m !== 'request')}`
    assert.deepEqual(blobRequests, [], `origin saw no blob request: ${detail}`)
    assert.ok(p2p.bytesFromPeers > 0, detail)
    assert.equal(p2p.bytesFromPeers, total, `every blob byte came from peers: ${detail}`)
    assert.ok((p2p.bytesFromPeer[a.peerId] ?? 0) > 0, `A sent them: ${detail}`)
    assert.equal(fetchedBytes(await b.metrics(), 'origin'), 0)
    // every layer went through B's Shoal
    const served = (await b.requests()).filter((l) => l.method === 'GET' && l.status === 200 && l.path?.includes('/blobs/'))
    for (const layer of image.layers) {
      const line = served.find((l) => l.path?.includes(layer.digest))
      assert.ok(line, `layer ${layer.digest} was served by B`)
      assert.equal(line.bytes, layer.size)
    }
  })
})
