/**
 * The origin of a fan-out fleet: docker-registry (distribution 2.8) serving in its own
 * namespace, behind that namespace's capped link.
 *
 * Images are pushed before it starts: a registry on this process's loopback writes the storage,
 * then the namespaced registry serves the same directory. So no push byte ever crosses the
 * origin's link, and its kernel tx counter counts pulls only. The namespaced registry is
 * started through the Fleet (teardown kills it) and probed from inside its namespace by an
 * agent (over that namespace's loopback, so probes never touch the counted link either).
 *
 * Its access log (Apache combined, one line per response) names each client's address, so
 * origin bytes per node can be told apart without trusting Shoal's own numbers.
 */
import { randomBytes } from 'node:crypto'
import { closeSync, openSync, readFileSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ChildProcess } from 'node:child_process'
import { type PushedImage, pushImage } from '../../../test/helpers/images.js'
import { startOriginRegistry } from '../../../test/helpers/registry.js'
import { FleetAgent } from './fleet-agents.js'
import type { Fleet, Host } from './netns.js'

export const ORIGIN_PORT = 5000
const START_TIMEOUT_MS = 20_000
// host ident user [time] "METHOD URI PROTO" status size "referer" "user agent"
const ACCESS_LINE_RE = /^(\S+) \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)(?: "[^"]*" "([^"]*)")?/

export interface ImageRequest {
  name: string
  tag: string
  layers: number
  /** total bytes of random content, split over the layers (each layer blob is a little larger) */
  bytes: number
  /** default `${name}:${tag}/${random}`: a fresh image each run */
  seed?: string
}

export interface FleetImage {
  name: string
  tag: string
  /** manifest digest */
  digest: string
  /** manifest + config + layers */
  bytes: number
  /** config first, then layers (what a puller fetches) */
  blobs: { digest: string; size: number }[]
  pushed: PushedImage
}

export interface OriginAccess {
  client: string
  method: string
  path: string
  status: number
  bytes: number
  userAgent: string
}

export interface FleetOrigin {
  readonly host: Host
  /** http://ADDR:PORT */
  readonly url: string
  /** ADDR:PORT, the registry as image refs name it */
  readonly hostPort: string
  readonly images: FleetImage[]
  readonly logFile: string
  /** docker-registry's pid */
  readonly pid: number | undefined
  /** bytes sent on the origin's link so far (kernel counter) */
  txBytes(): Promise<number>
  /** every response logged so far */
  accessLog(): OriginAccess[]
  /** blob bytes (2xx GET) sent per client address, for log entries from index `from` on (optionally only those matching) */
  blobBytesByClient(from?: number, filter?: (e: OriginAccess) => boolean): Map<string, number>
  stop(): Promise<void>
}

export async function startFleetOrigin(fleet: Fleet, host: Host, work: string, images: ImageRequest[]): Promise<FleetOrigin> {
  const storage = join(work, 'origin-storage')
  await mkdir(storage, { recursive: true })
  const local = await startOriginRegistry({ bindAddr: '127.0.0.1', rootDir: storage })
  const pushed: FleetImage[] = []
  try {
    for (const req of images) {
      const layerSize = Math.max(1, Math.floor(req.bytes / req.layers))
      const seed = req.seed ?? `${req.name}:${req.tag}/${Date.now()}-${randomBytes(4).toString('hex')}`
      const p = await pushImage(local.url, req.name, req.tag, { layers: req.layers, layerSize, format: 'oci', seed })
      const blobs = [p.config, ...p.layers].map((b) => ({ digest: b.digest, size: b.size }))
      pushed.push({ name: req.name, tag: req.tag, digest: p.digest, bytes: p.manifest.length + blobs.reduce((a, b) => a + b.size, 0), blobs, pushed: p })
    }
  } finally {
    await local.close()
  }

  const config = join(work, 'origin-config.yml')
  const logFile = join(work, 'origin.log')
  const addr = `${host.addr}:${ORIGIN_PORT}`
  await writeFile(
    config,
    `${JSON.stringify(
      {
        version: '0.1',
        log: { level: 'info', formatter: 'json', accesslog: { disabled: false } },
        storage: { filesystem: { rootdirectory: storage }, delete: { enabled: true }, maintenance: { uploadpurging: { enabled: false } } },
        http: { addr, secret: randomBytes(16).toString('hex') },
      },
      null,
      2,
    )}\n`,
  )
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('REGISTRY_')) env[k] = v
  const fd = openSync(logFile, 'a')
  let child: ChildProcess
  try {
    child = fleet.spawn(host, process.env['SHOAL_TEST_REGISTRY_BIN'] ?? 'docker-registry', ['serve', config], { stdio: ['ignore', fd, fd], env })
  } finally {
    closeSync(fd)
  }
  let exited = false
  child.once('exit', () => {
    exited = true
  })
  const probe = await FleetAgent.start(fleet, host, join(work, 'origin-agent.log'))
  const url = `http://${addr}`
  try {
    const deadline = Date.now() + START_TIMEOUT_MS
    for (;;) {
      if (exited) throw new Error(`docker-registry exited while starting:\n${tail(logFile)}`)
      const r = await probe.get(`${url}/v2/`, 1_000).catch(() => undefined)
      if (r?.status === 200) break
      if (Date.now() > deadline) throw new Error(`docker-registry did not answer on ${url} within ${START_TIMEOUT_MS} ms:\n${tail(logFile)}`)
      await sleep(50)
    }
  } finally {
    probe.close()
  }

  const accessLog = (): OriginAccess[] => {
    let text = ''
    try {
      text = readFileSync(logFile, 'latin1')
    } catch {
      return []
    }
    const out: OriginAccess[] = []
    for (const line of text.split('\n')) {
      const m = ACCESS_LINE_RE.exec(line)
      if (m === null) continue
      out.push({ client: m[1]!, method: m[2]!, path: m[3]!, status: Number(m[4]), bytes: m[5] === '-' ? 0 : Number(m[5]), userAgent: m[6] ?? '' })
    }
    return out
  }
  return {
    host,
    url,
    hostPort: addr,
    images: pushed,
    logFile,
    pid: child.pid,
    txBytes: () => fleet.txBytes(host),
    accessLog,
    blobBytesByClient: (from = 0, filter) => {
      const out = new Map<string, number>()
      for (const e of accessLog().slice(from)) {
        if (e.method !== 'GET' || e.status < 200 || e.status > 299 || !e.path.includes('/blobs/')) continue
        if (filter !== undefined && !filter(e)) continue
        out.set(e.client, (out.get(e.client) ?? 0) + e.bytes)
      }
      return out
    },
    stop: async () => {
      if (exited || child.pid === undefined) return
      const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()))
      try {
        process.kill(-child.pid, 'SIGTERM')
      } catch {
        return
      }
      await Promise.race([gone, sleep(3_000)])
    },
  }
}

function tail(file: string, lines = 20): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return '(no log)'
  }
}
