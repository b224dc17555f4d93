/**
 * Pushes deterministic test images to a registry with its own push API
 * (POST /v2/<name>/blobs/uploads/, then a monolithic PUT ?digest=, then PUT manifests/<ref>).
 *
 * All content is derived from a seed: an AES-256-CTR keystream (key = sha256(seed)) over zeros.
 * Blobs of any size are streamed, never held in memory: a first pass computes the digest, a
 * second pass streams the same bytes with a known Content-Length.
 *
 * Layers are real gzip-compressed tars (one regular file of random bytes) that containerd can
 * unpack. The gzip stream uses stored (uncompressed) deflate blocks: random data does not
 * compress anyway, the bytes are identical across passes and zlib versions, the size is known
 * up front, and it runs at memcpy + crc32 speed. Any gzip reader (Go's compress/gzip included)
 * accepts it.
 */
import { createCipheriv, createHash } from 'node:crypto'
import { type IncomingHttpHeaders, request } from 'node:http'
import { Readable } from 'node:stream'
import { crc32 } from 'node:zlib'

export const MEDIA_TYPES = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  octetStream: 'application/octet-stream',
} as const

export interface BlobSpec {
  digest: string
  size: number
  mediaType: string
}

export interface LayerSpec extends BlobSpec {
  /** the seed of the random file inside the tar */
  seed: string
  /** size of the random file inside the tar */
  fileSize: number
  /** sha256 of the uncompressed tar */
  diffId: string
}

export interface Platform {
  os: string
  architecture: string
  variant?: string
}

export interface PushOptions {
  /** sent as the Authorization header of every request */
  authorization?: string
}

const CHUNK_BYTES = 1 << 20
const ZEROS = Buffer.alloc(CHUNK_BYTES)
const TAR_BLOCK = 512
const TAR_MTIME = 1_700_000_000
const STORED_BLOCK_MAX = 65_535
const GZIP_HEADER = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])
const USTAR_MAX_OCTAL_SIZE = 0o77777777777

// ---- deterministic content -------------------------------------------------------------------

function keystream(seed: string) {
  const key = createHash('sha256').update('shoal-test-blob\0').update(seed).digest()
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16))
}

/** `size` pseudo-random bytes derived from `seed` */
export function randomBlobStream(seed: string, size: number): Readable {
  const cipher = keystream(seed)
  let left = size
  return new Readable({
    highWaterMark: CHUNK_BYTES,
    read() {
      if (left === 0) {
        this.push(null)
        return
      }
      const n = Math.min(CHUNK_BYTES, left)
      left -= n
      this.push(cipher.update(n === CHUNK_BYTES ? ZEROS : ZEROS.subarray(0, n)))
    },
  })
}

/** the same bytes as randomBlobStream, as async chunks */
async function* randomChunks(seed: string, size: number): AsyncGenerator<Buffer> {
  const cipher = keystream(seed)
  for (let left = size; left > 0; ) {
    const n = Math.min(CHUNK_BYTES, left)
    left -= n
    yield cipher.update(n === CHUNK_BYTES ? ZEROS : ZEROS.subarray(0, n))
  }
}

export async function randomBlobDigest(seed: string, size: number): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of randomChunks(seed, size)) hash.update(chunk)
  return `sha256:${hash.digest('hex')}`
}

export function sha256Digest(bytes: Buffer | string): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

// ---- tar + gzip ------------------------------------------------------------------------------

function padTo512(n: number): number {
  return Math.ceil(n / TAR_BLOCK) * TAR_BLOCK
}

/** size of a tar holding one file of fileSize bytes (header, padded data, two zero blocks) */
export function tarSize(fileSize: number): number {
  return TAR_BLOCK + padTo512(fileSize) + 2 * TAR_BLOCK
}

function writeOctal(buf: Buffer, offset: number, width: number, value: number): void {
  buf.write(value.toString(8).padStart(width - 1, '0') + '\0', offset, width, 'ascii')
}

/** a ustar header for a regular file; sizes past 8 GiB use the GNU base-256 encoding */
function tarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(TAR_BLOCK)
  h.write(name, 0, 100, 'utf8')
  writeOctal(h, 100, 8, 0o644) // mode
  writeOctal(h, 108, 8, 0) // uid
  writeOctal(h, 116, 8, 0) // gid
  if (size <= USTAR_MAX_OCTAL_SIZE) {
    writeOctal(h, 124, 12, size)
  } else {
    h[124] = 0x80
    let v = BigInt(size)
    for (let i = 135; i > 124; i--) {
      h[i] = Number(v & 0xffn)
      v >>= 8n
    }
  }
  writeOctal(h, 136, 12, TAR_MTIME)
  h.fill(0x20, 148, 156) // checksum field counts as spaces
  h.write('0', 156, 1, 'ascii') // regular file
  h.write('ustar\0', 257, 6, 'ascii')
  h.write('00', 263, 2, 'ascii')
  h.write('root', 265, 32, 'ascii')
  h.write('root', 297, 32, 'ascii')
  let sum = 0
  for (const byte of h) sum += byte
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii')
  return h
}

function layerFileName(seed: string): string {
  return `shoal-${createHash('sha256').update(seed).digest('hex').slice(0, 16)}.bin`
}

async function* tarChunks(seed: string, fileSize: number): AsyncGenerator<Buffer> {
  yield tarHeader(layerFileName(seed), fileSize)
  yield* randomChunks(seed, fileSize)
  yield Buffer.alloc(padTo512(fileSize) - fileSize + 2 * TAR_BLOCK)
}

/** size of the stored-block gzip of rawSize bytes */
export function storedGzipSize(rawSize: number): number {
  const blocks = Math.max(1, Math.ceil(rawSize / STORED_BLOCK_MAX))
  return GZIP_HEADER.length + blocks * 5 + rawSize + 8
}

function storedBlockHeader(len: number, final: boolean): Buffer {
  const h = Buffer.allocUnsafe(5)
  h[0] = final ? 1 : 0
  h.writeUInt16LE(len, 1)
  h.writeUInt16LE(~len & 0xffff, 3)
  return h
}

/** gzip of exactly rawSize bytes from source, in stored deflate blocks of 65535 bytes */
async function* storedGzip(source: AsyncIterable<Buffer>, rawSize: number): AsyncGenerator<Buffer> {
  yield GZIP_HEADER
  let crc = 0
  let consumed = 0
  let carry: Buffer = Buffer.alloc(0)
  for await (const chunk of source) {
    crc = crc32(chunk, crc)
    const data = carry.length === 0 ? chunk : Buffer.concat([carry, chunk])
    const parts: Buffer[] = []
    let at = 0
    while (data.length - at >= STORED_BLOCK_MAX) {
      const final = consumed + at + STORED_BLOCK_MAX === rawSize
      parts.push(storedBlockHeader(STORED_BLOCK_MAX, final), data.subarray(at, at + STORED_BLOCK_MAX))
      at += STORED_BLOCK_MAX
    }
    consumed += at
    carry = data.subarray(at)
    if (parts.length > 0) yield Buffer.concat(parts)
  }
  if (consumed + carry.length !== rawSize) {
    throw new Error(`gzip source gave ${consumed + carry.length} bytes, expected ${rawSize}`)
  }
  const trailer = Buffer.allocUnsafe(8)
  trailer.writeUInt32LE(crc >>> 0, 0)
  trailer.writeUInt32LE(rawSize % 2 ** 32, 4)
  if (carry.length > 0 || rawSize === 0) {
    yield Buffer.concat([storedBlockHeader(carry.length, true), carry, trailer])
  } else {
    yield trailer
  }
}

async function* tap(source: AsyncIterable<Buffer>, onChunk: (chunk: Buffer) => void): AsyncGenerator<Buffer> {
  for await (const chunk of source) {
    onChunk(chunk)
    yield chunk
  }
}

/** a gzip-compressed tar holding one file of fileSize random bytes derived from seed */
export function randomLayerStream(seed: string, fileSize: number): Readable {
  return Readable.from(storedGzip(tarChunks(seed, fileSize), tarSize(fileSize)), { objectMode: false })
}

/** digest, size and diff_id of randomLayerStream(seed, fileSize), in one streaming pass */
export async function randomLayerInfo(
  seed: string,
  fileSize: number,
): Promise<{ digest: string; size: number; diffId: string }> {
  const tarHash = createHash('sha256')
  const gzHash = createHash('sha256')
  let size = 0
  const raw = tarSize(fileSize)
  for await (const chunk of storedGzip(
    tap(tarChunks(seed, fileSize), (c) => tarHash.update(c)),
    raw,
  )) {
    gzHash.update(chunk)
    size += chunk.length
  }
  if (size !== storedGzipSize(raw)) throw new Error(`layer size ${size} != ${storedGzipSize(raw)}`)
  return { digest: `sha256:${gzHash.digest('hex')}`, size, diffId: `sha256:${tarHash.digest('hex')}` }
}

// ---- HTTP ------------------------------------------------------------------------------------

export interface HttpResult {
  status: number
  headers: IncomingHttpHeaders
  body: Buffer
}

export class PushError extends Error {
  readonly code = 'ERR_TEST_PUSH'
  constructor(
    message: string,
    readonly status: number,
    options?: ErrorOptions,
  ) {
    super(message, options)
    this.name = 'PushError'
  }
}

/** one HTTP/1.1 request on its own connection (no keep-alive to go stale across registry restarts) */
export async function httpRequest(
  url: string,
  method: string,
  headers: Record<string, string | number>,
  body?: Buffer | Readable,
): Promise<HttpResult> {
  return await new Promise<HttpResult>((resolve, reject) => {
    const req = request(url, { method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.once('error', reject)
      res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }))
    })
    req.once('error', reject)
    if (body === undefined) {
      req.end()
    } else if (Buffer.isBuffer(body)) {
      req.end(body)
    } else {
      body.once('error', (err) => req.destroy(err))
      body.pipe(req)
    }
  })
}

function authHeaders(opts: PushOptions | undefined): Record<string, string> {
  return opts?.authorization === undefined ? {} : { authorization: opts.authorization }
}

function expectStatus(res: HttpResult, expected: number, what: string): void {
  if (res.status !== expected) {
    throw new PushError(`${what}: HTTP ${res.status} ${res.body.toString('utf8').slice(0, 500)}`, res.status)
  }
}

/** uploads one blob unless the registry already has it */
async function uploadBlob(
  registryUrl: string,
  name: string,
  digest: string,
  size: number,
  body: () => Buffer | Readable,
  opts: PushOptions | undefined,
): Promise<void> {
  const auth = authHeaders(opts)
  const head = await httpRequest(`${registryUrl}/v2/${name}/blobs/${digest}`, 'HEAD', auth)
  if (head.status === 200 && Number(head.headers['content-length']) === size) return

  const post = await httpRequest(`${registryUrl}/v2/${name}/blobs/uploads/`, 'POST', { ...auth, 'content-length': 0 })
  expectStatus(post, 202, `POST ${name} blob upload`)
  const location = post.headers.location
  if (location === undefined) throw new PushError(`POST ${name} blob upload: no Location`, post.status)
  const target = new URL(location, registryUrl).href
  const putUrl = `${target}${target.includes('?') ? '&' : '?'}digest=${encodeURIComponent(digest)}`
  const put = await httpRequest(
    putUrl,
    'PUT',
    { ...auth, 'content-type': MEDIA_TYPES.octetStream, 'content-length': size },
    body(),
  )
  expectStatus(put, 201, `PUT ${name} blob ${digest}`)
}

/** pushes `size` random bytes derived from seed (not a tar: for big-blob tests) */
export async function pushBlob(
  registryUrl: string,
  name: string,
  seed: string,
  size: number,
  opts?: PushOptions,
): Promise<BlobSpec & { seed: string }> {
  const digest = await randomBlobDigest(seed, size)
  await uploadBlob(registryUrl, name, digest, size, () => randomBlobStream(seed, size), opts)
  return { digest, size, mediaType: MEDIA_TYPES.octetStream, seed }
}

export async function pushBytesBlob(
  registryUrl: string,
  name: string,
  bytes: Buffer,
  opts?: PushOptions & { mediaType?: string },
): Promise<BlobSpec> {
  const digest = sha256Digest(bytes)
  await uploadBlob(registryUrl, name, digest, bytes.length, () => bytes, opts)
  return { digest, size: bytes.length, mediaType: opts?.mediaType ?? MEDIA_TYPES.octetStream }
}

/** pushes a random gzip'd tar layer (see randomLayerStream) */
export async function pushLayer(
  registryUrl: string,
  name: string,
  seed: string,
  fileSize: number,
  opts?: PushOptions & { mediaType?: string },
): Promise<LayerSpec> {
  const info = await randomLayerInfo(seed, fileSize)
  await uploadBlob(registryUrl, name, info.digest, info.size, () => randomLayerStream(seed, fileSize), opts)
  return { ...info, mediaType: opts?.mediaType ?? MEDIA_TYPES.ociLayer, seed, fileSize }
}

/** PUTs manifest bytes verbatim under a tag or digest; returns their digest */
export async function pushManifest(
  registryUrl: string,
  name: string,
  reference: string,
  mediaType: string,
  manifest: Buffer,
  opts?: PushOptions,
): Promise<string> {
  const digest = sha256Digest(manifest)
  const res = await httpRequest(
    `${registryUrl}/v2/${name}/manifests/${reference}`,
    'PUT',
    { ...authHeaders(opts), 'content-type': mediaType, 'content-length': manifest.length },
    manifest,
  )
  expectStatus(res, 201, `PUT ${name} manifest ${reference}`)
  const echoed = res.headers['docker-content-digest']
  if (echoed !== digest) throw new PushError(`PUT ${name} manifest ${reference}: digest ${echoed} != ${digest}`, 201)
  return digest
}

// ---- images ----------------------------------------------------------------------------------

export interface PushedImage {
  name: string
  /** the tag it was pushed under; for the children of an index, their digest */
  tag: string
  digest: string
  mediaType: string
  manifest: Buffer
  config: BlobSpec
  layers: LayerSpec[]
}

export interface PushImageOptions extends PushOptions {
  layers: number
  /** size of the random file inside each layer's tar (the layer blob is slightly bigger) */
  layerSize: number
  format: 'oci' | 'docker'
  /** default `${name}:${tag}`; the same seed gives the same image */
  seed?: string
  /** default: the host's (linux + process.arch), so containerd picks it */
  platform?: Platform
}

export function hostPlatform(): Platform {
  const arch: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' }
  return { os: 'linux', architecture: arch[process.arch] ?? process.arch }
}

async function pushImageAs(
  registryUrl: string,
  name: string,
  reference: string | null,
  opts: PushImageOptions,
  seed: string,
): Promise<PushedImage> {
  const oci = opts.format === 'oci'
  const layerType = oci ? MEDIA_TYPES.ociLayer : MEDIA_TYPES.dockerLayer
  const layers = await Promise.all(
    Array.from({ length: opts.layers }, (_, i) =>
      pushLayer(registryUrl, name, `${seed}/layer/${i}`, opts.layerSize, { ...opts, mediaType: layerType }),
    ),
  )
  const platform = opts.platform ?? hostPlatform()
  const configJson = {
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant === undefined ? {} : { variant: platform.variant }),
    config: { Labels: { 'org.shoal.test.seed': seed } },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, i) => ({ created_by: `shoal test layer ${i}` })),
  }
  const config = await pushBytesBlob(registryUrl, name, Buffer.from(JSON.stringify(configJson)), {
    ...opts,
    mediaType: oci ? MEDIA_TYPES.ociConfig : MEDIA_TYPES.dockerConfig,
  })
  const mediaType = oci ? MEDIA_TYPES.ociManifest : MEDIA_TYPES.dockerManifest
  const descriptor = (b: BlobSpec) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size })
  const manifest = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType, config: descriptor(config), layers: layers.map(descriptor) }),
  )
  const digest = sha256Digest(manifest)
  await pushManifest(registryUrl, name, reference ?? digest, mediaType, manifest, opts)
  return { name, tag: reference ?? digest, digest, mediaType, manifest, config, layers }
}

export async function pushImage(
  registryUrl: string,
  name: string,
  tag: string,
  opts: PushImageOptions,
): Promise<PushedImage> {
  return await pushImageAs(registryUrl, name, tag, opts, opts.seed ?? `${name}:${tag}`)
}

export interface PushedIndex {
  name: string
  tag: string
  digest: string
  mediaType: string
  manifest: Buffer
  images: PushedImage[]
}

export interface PushIndexOptions extends PushOptions {
  platforms: Platform[]
  layers: number
  layerSize: number
  /** default `${name}:${tag}`; each child uses `${seed}/${os}/${architecture}[/${variant}]` */
  seed?: string
}

/** an OCI image index whose children (OCI manifests, one per platform) are pushed by digest */
export async function pushIndex(
  registryUrl: string,
  name: string,
  tag: string,
  opts: PushIndexOptions,
): Promise<PushedIndex> {
  const seed = opts.seed ?? `${name}:${tag}`
  const images: PushedImage[] = []
  for (const platform of opts.platforms) {
    const childSeed = [seed, platform.os, platform.architecture, platform.variant].filter((p) => p !== undefined).join('/')
    images.push(
      await pushImageAs(registryUrl, name, null, { ...opts, format: 'oci', platform }, childSeed),
    )
  }
  const mediaType = MEDIA_TYPES.ociIndex
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      manifests: images.map((image, i) => ({
        mediaType: image.mediaType,
        digest: image.digest,
        size: image.manifest.length,
        platform: opts.platforms[i],
      })),
    }),
  )
  const digest = await pushManifest(registryUrl, name, tag, mediaType, manifest, opts)
  return { name, tag, digest, mediaType, manifest, images }
}
