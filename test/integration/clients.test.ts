// Self-test of the real-client helpers against a plain docker-registry (no Shoal): containerd
// pulls and unpacks through a hosts.toml mirror entry, skopeo copies through a registries.conf
// mirror. The "mirror" is a tiny logging proxy in front of the registry, so the test also pins
// down the exact requests each client sends to a mirror.
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { gzipSync } from 'node:zlib'
import { type Containerd, ctrImages, ctrPull, startContainerd, writeHostsToml } from '../helpers/containerd.js'
import { freePort, type LoggedProcess, liveChildren, spawnLogged, waitFor } from '../helpers/proc.js'
import { skopeoCopy, skopeoInspect, skopeoInspectText, writeRegistriesConf } from '../helpers/skopeo.js'

// A port nothing listens on: `server =` / `location =` fallbacks point here so that a mirror
// failure fails the test fast instead of reaching for a real host name.
const DEAD_ENDPOINT = '127.0.0.1:1'
const ORIGIN_HOST = 'origin.test'
const STRIP_ORIGIN_PREFIX = /^\/v2\/origin\.test\//

describe('real container clients through a mirror', () => {
  let dir: string
  let registry: LoggedProcess
  let registryPort: number
  let proxy: http.Server
  let proxyPort: number
  let containerd: Containerd | undefined
  const seen: { method: string; url: string }[] = []
  let image: TestImage

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-clients-'))

    registryPort = await freePort()
    await writeFile(
      join(dir, 'registry.yml'),
      [
        'version: 0.1',
        'log: {level: info}',
        `storage: {filesystem: {rootdirectory: ${join(dir, 'registry-data')}}, delete: {enabled: true}}`,
        `http: {addr: 127.0.0.1:${registryPort}}`,
        '',
      ].join('\n'),
    )
    registry = spawnLogged('docker-registry', ['serve', join(dir, 'registry.yml')], join(dir, 'registry.log'))
    await waitFor('docker-registry', async () => (await fetch(`http://127.0.0.1:${registryPort}/v2/`)).ok)

    // The mirror: logs every request, strips a leading /v2/origin.test/ (CRI-O style), keeps ?ns=.
    proxyPort = await freePort()
    proxy = http.createServer((req, res) => {
      seen.push({ method: req.method ?? '', url: req.url ?? '' })
      const path = (req.url ?? '/').replace(STRIP_ORIGIN_PREFIX, '/v2/')
      const upstream = http.request(
        { host: '127.0.0.1', port: registryPort, method: req.method, path, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers)
          r.pipe(res)
        },
      )
      upstream.on('error', () => res.destroy())
      req.pipe(upstream)
    })
    await new Promise<void>((resolve) => proxy.listen(proxyPort, '127.0.0.1', resolve))

    image = await writeTestImage(join(dir, 'layout'), 'v1')
    await skopeoCopy(`oci:${join(dir, 'layout')}:v1`, `docker://127.0.0.1:${registryPort}/demo/app:v1`, {
      destTlsVerify: false,
    })
  })

  after(async () => {
    await containerd?.close()
    await registry?.stop()
    await new Promise<void>((resolve) => (proxy ? proxy.close(() => resolve()) : resolve()))
    proxy?.closeAllConnections()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
    assert.deepEqual(liveChildren(), [], 'child processes left running')
  })

  it('containerd pulls and unpacks through a hosts.toml mirror entry', async () => {
    containerd = await startContainerd()
    assert.equal(containerd.snapshotter, 'native')
    const hostsDir = join(dir, 'certs.d')
    // The registry itself is unreachable: only the mirror can serve this pull.
    await writeHostsToml(hostsDir, ORIGIN_HOST, `http://127.0.0.1:${proxyPort}`, { server: `http://${DEAD_ENDPOINT}` })

    seen.length = 0
    const ref = `${ORIGIN_HOST}/demo/app:v1`
    await ctrPull(containerd, ref, { hostsDir, timeoutMs: 60_000 })

    assert.ok((await ctrImages(containerd)).includes(ref))
    const ns = `ns=${encodeURIComponent(ORIGIN_HOST)}`
    assert.deepEqual(
      seen.filter((r) => r.url.includes('/manifests/')).map((r) => `${r.method} ${r.url}`),
      [`HEAD /v2/demo/app/manifests/v1?${ns}`, `GET /v2/demo/app/manifests/${image.manifestDigest}?${ns}`],
    )
    const blobGets = seen.filter((r) => r.method === 'GET' && r.url.includes('/blobs/')).map((r) => r.url)
    assert.deepEqual(
      blobGets.sort(),
      [image.configDigest, ...image.layerDigests].map((d) => `/v2/demo/app/blobs/${d}?${ns}`).sort(),
    )

    // Unpacked by the native snapshotter: the layers' files are on disk.
    const snapshots = join(containerd.root, 'io.containerd.snapshotter.v1.native', 'snapshots')
    const found = (await readdir(snapshots)).map((s) => join(snapshots, s))
    assert.ok(found.some((s) => existsSync(join(s, 'etc', 'hello.txt'))), 'layer 1 not unpacked')
    assert.ok(found.some((s) => existsSync(join(s, 'etc', 'world.txt'))), 'layer 2 not unpacked')
  })

  it('containerd finds a host:port hosts.toml directory', async () => {
    assert.ok(containerd !== undefined)
    const hostsDir = join(dir, 'certs.d-port')
    const registryHost = `127.0.0.1:${registryPort}`
    await writeHostsToml(hostsDir, registryHost, `http://127.0.0.1:${proxyPort}`, { server: `http://${registryHost}` })
    assert.ok(existsSync(join(hostsDir, registryHost, 'hosts.toml')))

    seen.length = 0
    await ctrPull(containerd, `${registryHost}/demo/app:v1`, { hostsDir, unpack: false })
    assert.ok(seen.some((r) => r.url === `/v2/demo/app/manifests/v1?ns=${encodeURIComponent(registryHost)}`))
  })

  it('ctrPull rejects with ctr stderr when nothing can serve the image', async () => {
    assert.ok(containerd !== undefined)
    const hostsDir = join(dir, 'certs.d')
    await assert.rejects(
      ctrPull(containerd, `${ORIGIN_HOST}/demo/app:nope`, { hostsDir, timeoutMs: 30_000 }),
      /failed to resolve reference/,
    )
  })

  it('skopeo copies through a registries.conf mirror with the upstream host in the path', async () => {
    const conf = join(dir, 'registries.conf')
    await writeRegistriesConf(conf, [
      {
        prefix: ORIGIN_HOST,
        location: DEAD_ENDPOINT,
        mirrors: [{ location: `127.0.0.1:${proxyPort}/${ORIGIN_HOST}`, insecure: true }],
      },
    ])

    seen.length = 0
    const out = join(dir, 'copied')
    await skopeoCopy(`docker://${ORIGIN_HOST}/demo/app:v1`, `oci:${out}:v1`, { registriesConf: conf })

    assert.ok(seen.some((r) => r.method === 'GET' && r.url === `/v2/${ORIGIN_HOST}/demo/app/manifests/v1`))
    for (const d of [image.configDigest, ...image.layerDigests]) {
      assert.ok(seen.some((r) => r.method === 'GET' && r.url === `/v2/${ORIGIN_HOST}/demo/app/blobs/${d}`), d)
    }
    assert.ok(!seen.some((r) => r.url.includes('ns=')), 'skopeo sends no ns parameter')

    const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8'))
    assert.equal(index.manifests[0].digest, image.manifestDigest)

    const raw = await skopeoInspectText(`docker://${ORIGIN_HOST}/demo/app:v1`, { registriesConf: conf, raw: true })
    assert.equal(sha256(raw), image.manifestDigest)
    const summary = await skopeoInspect(`docker://${ORIGIN_HOST}/demo/app:v1`, { registriesConf: conf })
    assert.equal(summary.Digest, image.manifestDigest)
    assert.deepEqual(summary.Layers, image.layerDigests)
  })
})

// ---------------------------------------------------------------------------------------------
// a small two-layer OCI image, built in memory

interface TestImage {
  manifestDigest: string
  configDigest: string
  layerDigests: string[]
}

async function writeTestImage(layoutDir: string, tag: string): Promise<TestImage> {
  const blobs = join(layoutDir, 'blobs', 'sha256')
  await mkdir(blobs, { recursive: true })
  const put = async (bytes: Buffer) => {
    const digest = sha256(bytes)
    await writeFile(join(blobs, digest.slice('sha256:'.length)), bytes)
    return { digest, size: bytes.length }
  }

  const tars = [
    tar([{ name: 'etc/', dir: true }, { name: 'etc/hello.txt', data: 'hello\n' }]),
    tar([{ name: 'etc/', dir: true }, { name: 'etc/world.txt', data: 'world\n' }]),
  ]
  const layers = await Promise.all(tars.map((t) => put(gzipSync(t))))
  const config = await put(
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        config: {},
        rootfs: { type: 'layers', diff_ids: tars.map((t) => sha256(t)) },
      }),
    ),
  )
  const manifest = await put(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...l })),
      }),
    ),
  )
  await writeFile(
    join(layoutDir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          ...manifest,
          annotations: { 'org.opencontainers.image.ref.name': tag },
        },
      ],
    }),
  )
  await writeFile(join(layoutDir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  return { manifestDigest: manifest.digest, configDigest: config.digest, layerDigests: layers.map((l) => l.digest) }
}

/** A minimal ustar archive: directories and regular files, root-owned, mtime 0. */
function tar(entries: { name: string; dir?: boolean; data?: string }[]): Buffer {
  const parts: Buffer[] = []
  for (const e of entries) {
    const data = Buffer.from(e.data ?? '')
    const h = Buffer.alloc(512)
    h.write(e.name, 0, 100)
    h.write(e.dir === true ? '0000755\0' : '0000644\0', 100)
    h.write('0000000\0', 108) // uid
    h.write('0000000\0', 116) // gid
    h.write(`${data.length.toString(8).padStart(11, '0')}\0`, 124)
    h.write('00000000000\0', 136) // mtime
    h.write('        ', 148) // checksum placeholder
    h.write(e.dir === true ? '5' : '0', 156)
    h.write('ustar\0', 257)
    h.write('00', 263)
    let sum = 0
    for (const b of h) sum += b
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148)
    parts.push(h, data, Buffer.alloc((512 - (data.length % 512)) % 512))
  }
  parts.push(Buffer.alloc(1024))
  return Buffer.concat(parts)
}

function sha256(bytes: Buffer | string): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}
