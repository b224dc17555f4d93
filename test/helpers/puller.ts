/**
 * A light, verifying image puller: what a runtime does on a pull, minus unpacking.
 *
 * GET the manifest (by tag or digest, with the Accept set containerd sends), check its bytes
 * against Docker-Content-Digest and the expected digest, pick the host platform's manifest
 * from an index, then GET the config and every layer, a few at a time (containerd fetches 3
 * blobs at once), hashing each body while it streams. Nothing is buffered or written: a blob
 * costs one sha256 pass of CPU. Any status other than 200, a short body, or a digest mismatch
 * fails the pull with a PullError naming the blob.
 *
 * `ns` is sent as containerd's `?ns=<registry>` query parameter, so a node-local mirror knows
 * the upstream; leave it out to pull straight from a registry.
 */
import { createHash } from 'node:crypto'
import { Agent, request } from 'node:http'

export const MANIFEST_ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  '*/*',
].join(', ')

const INDEX_TYPES = new Set(['application/vnd.docker.distribution.manifest.list.v2+json', 'application/vnd.oci.image.index.v1+json'])
const DEFAULT_IDLE_TIMEOUT_MS = 120_000
const DEFAULT_CONCURRENCY = 3
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024
const USER_AGENT = 'verifying-puller'

export class PullError extends Error {
  readonly code = 'ERR_PULL'
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'PullError'
  }
}

export interface PullSpec {
  /** http://HOST:PORT of the registry or mirror */
  base: string
  /** repository, e.g. `bench/fanout` */
  name: string
  /** tag or digest */
  reference: string
  /** containerd's `ns` query parameter (the upstream registry, as the runtime names it) */
  ns?: string
  /** the manifest (the platform's, under an index) must have this digest */
  expectManifestDigest?: string
  /** blobs fetched at once; default 3 */
  concurrency?: number
  /** a request that sends nothing for this long fails; default 120 s */
  idleTimeoutMs?: number
  /** `os/arch` picked from an index; default this host's (linux/amd64 on x64) */
  platform?: string
}

export interface PulledBlob {
  digest: string
  bytes: number
  /** request sent → last byte hashed */
  seconds: number
  /** seconds from the pull's start to this blob's last byte */
  doneAt: number
}

export interface PullReport {
  manifestDigest: string
  manifestBytes: number
  /** config first, then the layers in manifest order */
  blobs: PulledBlob[]
  /** manifest(s) and blobs */
  bytes: number
  seconds: number
}

interface Descriptor {
  mediaType?: string
  digest: string
  size: number
  platform?: { os?: string; architecture?: string; variant?: string }
}

interface Fetched {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
}

export function hostPlatformString(): string {
  const arch: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' }
  return `linux/${arch[process.arch] ?? process.arch}`
}

export async function pullImage(spec: PullSpec): Promise<PullReport> {
  const started = performance.now()
  const elapsed = (): number => (performance.now() - started) / 1000
  const agent = new Agent({ keepAlive: true, maxSockets: Math.max(2, spec.concurrency ?? DEFAULT_CONCURRENCY) })
  const query = spec.ns === undefined ? '' : `?ns=${encodeURIComponent(spec.ns)}`
  const url = (kind: 'manifests' | 'blobs', ref: string): string => `${spec.base}/v2/${spec.name}/${kind}/${ref}${query}`
  const idle = spec.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS
  try {
    let manifestBytes = 0
    let m = await getManifest(url('manifests', spec.reference), spec.reference, agent, idle)
    manifestBytes += m.body.length
    if (INDEX_TYPES.has(m.mediaType)) {
      const want = spec.platform ?? hostPlatformString()
      const list = (m.json as { manifests?: Descriptor[] }).manifests ?? []
      const child = list.find((d) => `${d.platform?.os}/${d.platform?.architecture}` === want) ?? list[0]
      if (child === undefined) throw new PullError(`${spec.name}:${spec.reference}: empty index`)
      m = await getManifest(url('manifests', child.digest), child.digest, agent, idle)
      manifestBytes += m.body.length
    }
    if (spec.expectManifestDigest !== undefined && m.digest !== spec.expectManifestDigest) {
      throw new PullError(`${spec.name}:${spec.reference}: manifest ${m.digest}, expected ${spec.expectManifestDigest}`)
    }
    const manifest = m.json as { config?: Descriptor; layers?: Descriptor[] }
    if (manifest.config === undefined || !Array.isArray(manifest.layers)) throw new PullError(`${spec.name}:${spec.reference}: not an image manifest`)
    const wanted = [manifest.config, ...manifest.layers]
    const blobs: PulledBlob[] = new Array(wanted.length)
    let next = 0
    const worker = async (): Promise<void> => {
      for (;;) {
        const i = next++
        if (i >= wanted.length) return
        const d = wanted[i]!
        const t0 = elapsed()
        const bytes = await getBlob(url('blobs', d.digest), d.digest, d.size, agent, idle)
        blobs[i] = { digest: d.digest, bytes, seconds: elapsed() - t0, doneAt: elapsed() }
      }
    }
    await Promise.all(Array.from({ length: Math.min(wanted.length, spec.concurrency ?? DEFAULT_CONCURRENCY) }, worker))
    return {
      manifestDigest: m.digest,
      manifestBytes,
      blobs,
      bytes: manifestBytes + blobs.reduce((a, b) => a + b.bytes, 0),
      seconds: elapsed(),
    }
  } finally {
    agent.destroy()
  }
}

async function getManifest(
  url: string,
  reference: string,
  agent: Agent,
  idleMs: number,
): Promise<{ digest: string; mediaType: string; body: Buffer; json: unknown }> {
  const res = await fetchSmall(url, { accept: MANIFEST_ACCEPT, 'user-agent': USER_AGENT }, agent, idleMs)
  if (res.status !== 200) throw new PullError(`GET ${url}: HTTP ${res.status} ${res.body.toString('utf8').slice(0, 300)}`)
  const digest = `sha256:${createHash('sha256').update(res.body).digest('hex')}`
  const echoed = res.headers['docker-content-digest']
  if (typeof echoed === 'string' && echoed !== digest) throw new PullError(`GET ${url}: body hashes to ${digest}, Docker-Content-Digest says ${echoed}`)
  if (reference.startsWith('sha256:') && reference !== digest) throw new PullError(`GET ${url}: body hashes to ${digest}`)
  let json: unknown
  try {
    json = JSON.parse(res.body.toString('utf8'))
  } catch (err) {
    throw new PullError(`GET ${url}: manifest is not JSON`, { cause: err })
  }
  const header = String(res.headers['content-type'] ?? '').split(';')[0]!.trim()
  const mediaType = (json as { mediaType?: string }).mediaType ?? header
  return { digest, mediaType, body: res.body, json }
}

function fetchSmall(url: string, headers: Record<string, string>, agent: Agent, idleMs: number): Promise<Fetched> {
  return new Promise<Fetched>((resolve, reject) => {
    const req = request(url, { method: 'GET', headers, agent }, (res) => {
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (c: Buffer) => {
        size += c.length
        if (size > MAX_MANIFEST_BYTES) {
          req.destroy(new PullError(`GET ${url}: more than ${MAX_MANIFEST_BYTES} bytes`))
          return
        }
        chunks.push(c)
      })
      res.once('error', reject)
      res.once('end', () => {
        if (!res.complete) {
          reject(new PullError(`GET ${url}: body cut after ${size} bytes`))
          return
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) })
      })
    })
    req.setTimeout(idleMs, () => req.destroy(new PullError(`GET ${url}: idle for ${idleMs} ms`)))
    req.once('error', reject)
    req.end()
  })
}

/** GETs a blob, hashing it as it streams; resolves with its byte count when it matches digest and size */
export function getBlob(url: string, digest: string, size: number | undefined, agent: Agent | false, idleMs = DEFAULT_IDLE_TIMEOUT_MS): Promise<number> {
  const colon = digest.indexOf(':')
  const algorithm = digest.slice(0, colon)
  if (algorithm !== 'sha256' && algorithm !== 'sha512') return Promise.reject(new PullError(`unsupported digest ${digest}`))
  return new Promise<number>((resolve, reject) => {
    const req = request(url, { method: 'GET', headers: { accept: '*/*', 'user-agent': USER_AGENT }, agent }, (res) => {
      const status = res.statusCode ?? 0
      if (status !== 200) {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => {
          if (chunks.length < 8) chunks.push(c)
        })
        res.once('end', () => reject(new PullError(`GET ${url}: HTTP ${status} ${Buffer.concat(chunks).toString('utf8').slice(0, 300)}`)))
        res.once('error', reject)
        return
      }
      const hash = createHash(algorithm)
      let bytes = 0
      res.on('data', (chunk: Buffer) => {
        hash.update(chunk)
        bytes += chunk.length
      })
      res.once('error', (err) => reject(new PullError(`GET ${url}: body failed after ${bytes} bytes: ${err.message}`, { cause: err })))
      res.once('end', () => {
        if (!res.complete) {
          reject(new PullError(`GET ${url}: body cut after ${bytes} bytes`))
          return
        }
        const got = `${algorithm}:${hash.digest('hex')}`
        if (got !== digest) {
          reject(new PullError(`GET ${url}: ${bytes} bytes hash to ${got}, expected ${digest}`))
          return
        }
        if (size !== undefined && bytes !== size) {
          reject(new PullError(`GET ${url}: ${bytes} bytes, expected ${size}`))
          return
        }
        resolve(bytes)
      })
    })
    req.setTimeout(idleMs, () => req.destroy(new PullError(`GET ${url}: idle for ${idleMs} ms`)))
    req.once('error', reject)
    req.end()
  })
}
