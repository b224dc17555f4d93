// Fleets of real Shoal daemons joined into one swarm on loopback, and the probes the swarm tests
// share: p2p status, waiting for joins and announcements, hashing GETs, image pulls.
import { createHash } from 'node:crypto'
import { copyFile, mkdir, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { join } from 'node:path'
import { generateSwarmKey } from '../../src/p2p/node.js'
import { MEDIA_TYPES, type PushedImage } from './images.js'
import { waitFor } from './proc.js'
import type { SwarmStatus } from '../../src/daemon/swarm.js'
import { type Shoal, type StartShoalOptions, startShoal } from './shoal.js'

/** the `p2p` part of GET /api/v1/status (as the daemon builds it) */
export type P2pStatus = SwarmStatus & { enabled: boolean }

export interface SwarmNode extends Shoal {
  /** 1-based position in its fleet, for messages */
  readonly index: number
  readonly peerId: string
  /** the first libp2p listen address, with /p2p/<id>: what other nodes bootstrap from */
  readonly p2pAddr: string
  p2p(): Promise<P2pStatus>
}

export interface FleetOptions extends Omit<StartShoalOptions, 'dataDir'> {
  /** path of a swarm key file every node gets (--swarm-key) */
  swarmKeyFile?: string
  /** extra options for node i (1-based); its args and env add to the fleet's */
  node?: (index: number) => Partial<StartShoalOptions>
}

export interface Fleet {
  readonly nodes: SwarmNode[]
  /** one more node, bootstrapped from node 1 (unless opts.args brings its own --bootstrap) */
  add(opts?: Partial<StartShoalOptions> & { bootstrap?: string[] | false }): Promise<SwarmNode>
  /** close every node, killed ones included; never throws */
  close(): Promise<void>
}

export async function p2pStatus(shoal: Shoal): Promise<P2pStatus> {
  const status = await shoal.status()
  const p2p = status['p2p'] as P2pStatus | undefined
  if (p2p === undefined) throw new Error(`status has no p2p section: ${JSON.stringify(status)}`)
  return p2p
}

export async function asSwarmNode(shoal: Shoal, index: number): Promise<SwarmNode> {
  const p2p = await p2pStatus(shoal)
  if (!p2p.enabled) throw new Error(`node ${index}: p2p is off`)
  const addr = p2p.listen.find((a) => a.startsWith('/ip4/127.0.0.1/')) ?? p2p.listen[0]
  if (addr === undefined || !addr.includes('/p2p/')) throw new Error(`node ${index}: no listen multiaddr with /p2p/: ${JSON.stringify(p2p.listen)}`)
  return Object.assign(shoal, { index, peerId: p2p.peerId, p2pAddr: addr, p2p: () => p2pStatus(shoal) })
}

function merge(base: Omit<StartShoalOptions, 'dataDir'>, extra: Partial<StartShoalOptions>, swarmKeyFile: string | undefined, bootstrap: string[]): StartShoalOptions {
  const args = [...(base.args ?? []), ...(extra.args ?? [])]
  if (swarmKeyFile !== undefined && !args.includes('--swarm-key')) args.push('--swarm-key', swarmKeyFile)
  for (const addr of bootstrap) args.push('--bootstrap', addr)
  return {
    ...base,
    ...extra,
    upstreams: { ...base.upstreams, ...extra.upstreams },
    env: { ...base.env, ...extra.env },
    args,
  }
}

/**
 * N daemons: node 1 first, then the others at once, each with `--bootstrap <node 1>`. Resolves
 * when every node has joined (a peer in its routing table) and node 1 knows all the others.
 * A fleet of one is node 1 alone (not joined): add() brings the others later.
 */
export async function startFleet(count: number, opts: FleetOptions = {}): Promise<Fleet> {
  const { swarmKeyFile, node: perNode, ...base } = opts
  const nodes: SwarmNode[] = []
  const fleet: Fleet = {
    nodes,
    add: async (extra = {}) => {
      const { bootstrap, ...rest } = extra
      const index = nodes.length + 1
      const seeds = bootstrap === false ? [] : (bootstrap ?? (nodes[0] === undefined ? [] : [nodes[0].p2pAddr]))
      const shoal = await startShoal(merge(base, { ...perNode?.(index), ...rest }, swarmKeyFile, seeds))
      const node = await asSwarmNode(shoal, index).catch(async (err: unknown) => {
        await shoal.close()
        throw err
      })
      nodes.push(node)
      return node
    },
    close: async () => {
      await keepLogs(nodes)
      await Promise.allSettled(nodes.map((n) => n.close()))
    },
  }
  try {
    if (count < 1) return fleet
    await fleet.add({ bootstrap: [] })
    const first = nodes[0]!
    const rest = await Promise.allSettled(
      Array.from({ length: count - 1 }, (_, i) => startShoal(merge(base, perNode?.(i + 2) ?? {}, swarmKeyFile, [first.p2pAddr]))),
    )
    for (const [i, r] of rest.entries()) {
      if (r.status === 'rejected') throw r.reason
      nodes.push(await asSwarmNode(r.value, i + 2))
    }
    if (count > 1) await waitJoined(nodes, { timeoutMs: 20_000, knownBy: { node: first, peers: count - 1 } })
  } catch (err) {
    await fleet.close()
    throw err
  }
  return fleet
}

/**
 * With SHOAL_TEST_KEEP_LOGS=DIR, copies each node's log to DIR/<peer id>.log (the daemons' logs
 * are removed when they close): for looking into a failure after the run.
 */
export async function keepLogs(nodes: SwarmNode[]): Promise<void> {
  const dir = process.env['SHOAL_TEST_KEEP_LOGS']
  if (dir === undefined || dir === '') return
  await mkdir(dir, { recursive: true })
  await Promise.allSettled(nodes.map((n) => copyFile(n.proc.logPath, join(dir, `${n.peerId}.log`))))
}

/** every node has joined; optionally one node's routing table holds at least `peers` entries */
export async function waitJoined(nodes: SwarmNode[], opts: { timeoutMs?: number; knownBy?: { node: SwarmNode; peers: number } } = {}): Promise<void> {
  let last: P2pStatus[] = []
  try {
    await waitFor(
      'every node to join the swarm',
      async () => {
        last = await Promise.all(nodes.map((n) => n.p2p()))
        if (!last.every((s) => s.joined)) return false
        if (opts.knownBy === undefined) return true
        return (await opts.knownBy.node.p2p()).routingTableSize >= opts.knownBy.peers
      },
      { timeoutMs: opts.timeoutMs ?? 20_000, intervalMs: 100 },
    )
  } catch (err) {
    const summary = last.map((s, i) => `node ${i + 1}: joined=${s.joined} connected=${s.connectedPeers} table=${s.routingTableSize}`).join('; ')
    throw new Error(`${(err as Error).message}: ${summary}`, { cause: err })
  }
}

/**
 * Waits until no node has a blob download in flight (status downloadsInFlight): a node's pull can
 * set others fetching (origin fetchers finish the blob after the puller has it).
 */
export async function waitSettled(nodes: Shoal[], timeoutMs = 30_000): Promise<void> {
  await waitFor(
    'every download in the fleet to end',
    async () => (await Promise.all(nodes.map((n) => n.status()))).every((s) => s['downloadsInFlight'] === 0),
    { timeoutMs, intervalMs: 100 },
  )
}

/**
 * Waits until `node` has stored a provider record for each digest on at least one peer (its
 * router logs `advertised` at debug level: start the node with logLevel 'debug').
 */
export async function waitAnnounced(node: Shoal, digests: string[], timeoutMs = 15_000): Promise<void> {
  const missing = new Set(digests)
  await waitFor(
    `announcements of ${digests.length} blob(s)`,
    async () => {
      for (const line of await node.logs()) {
        if (line.msg === 'advertised' && typeof line['digest'] === 'string') missing.delete(line['digest'])
      }
      return missing.size === 0
    },
    { timeoutMs, intervalMs: 100 },
  ).catch((err: Error) => {
    throw new Error(`${err.message}; not announced: ${[...missing].join(', ')}`, { cause: err })
  })
}

/** a new swarm key file at `path` (mode 0600) */
export async function writeSwarmKey(path: string): Promise<string> {
  await writeFile(path, generateSwarmKey(), { mode: 0o600 })
  return path
}

export interface HashedBody {
  status: number
  digest: string
  bytes: number
  /** ms to the first body byte (-1 without a body) */
  firstByteMs: number
  totalMs: number
}

/** GET url, hashing the body as it streams; rejects on a transport error or a cut-short body */
export function hashGet(url: string, headers: Record<string, string> = {}): Promise<HashedBody> {
  const t0 = performance.now()
  return new Promise((resolve, reject) => {
    const req = request(url, { headers, agent: false }, (res) => {
      const hash = createHash('sha256')
      let bytes = 0
      let firstByteMs = -1
      res.on('data', (chunk: Buffer) => {
        if (firstByteMs < 0) firstByteMs = performance.now() - t0
        bytes += chunk.length
        hash.update(chunk)
      })
      res.once('end', () => {
        if (!res.complete) return reject(new Error(`GET ${url}: body cut short after ${bytes} bytes`))
        resolve({ status: res.statusCode ?? 0, digest: `sha256:${hash.digest('hex')}`, bytes, firstByteMs, totalMs: performance.now() - t0 })
      })
      res.once('error', reject)
      res.once('aborted', () => reject(new Error(`GET ${url}: aborted after ${bytes} bytes`)))
    })
    req.once('error', reject)
    req.end()
  })
}

/** the /v2 URL of a blob of `name` on a node, for a registry configured as `ns` */
export function blobUrl(node: Shoal, name: string, digest: string, ns: string): string {
  return `${node.url}/v2/${name}/blobs/${digest}?ns=${encodeURIComponent(ns)}`
}

const ACCEPT = [MEDIA_TYPES.ociIndex, MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifestList, MEDIA_TYPES.dockerManifest].join(', ')

/**
 * Pulls an image the way a runtime does (manifest by tag, then config and layers) through a
 * node; throws unless every body is complete and hashes to its digest.
 */
export async function pullImage(node: Shoal, ns: string, image: PushedImage): Promise<void> {
  const manifest = await hashGet(`${node.url}/v2/${image.name}/manifests/${image.tag}?ns=${encodeURIComponent(ns)}`, { accept: ACCEPT })
  if (manifest.status !== 200 || manifest.digest !== image.digest) {
    throw new Error(`manifest ${image.name}:${image.tag} via ${node.url}: HTTP ${manifest.status}, ${manifest.digest}`)
  }
  await Promise.all(
    [image.config, ...image.layers].map(async (blob) => {
      const got = await hashGet(blobUrl(node, image.name, blob.digest, ns))
      if (got.status !== 200 || got.digest !== blob.digest || got.bytes !== blob.size) {
        throw new Error(`blob ${blob.digest} via ${node.url}: HTTP ${got.status}, ${got.bytes} bytes hashing to ${got.digest}`)
      }
    }),
  )
}

/** the value of shoal_transfer_fetched_bytes_total{source=...} in a /metrics text (0 when absent) */
export function fetchedBytes(metrics: string, source: 'peer' | 'origin'): number {
  const re = new RegExp(`^shoal_transfer_fetched_bytes_total\\{[^}]*source="${source}"[^}]*\\} (\\S+)$`, 'm')
  const m = re.exec(metrics)
  return m === null ? 0 : Number(m[1])
}

/** the `blob fetched through the swarm` log line of a digest, if the node wrote one */
export async function swarmFetchLine(node: Shoal, digest: string): Promise<{ bySource: Record<string, number> } | undefined> {
  const line = (await node.logs()).find((l) => l.msg === 'blob fetched through the swarm' && l['digest'] === digest)
  return line as { bySource: Record<string, number> } | undefined
}

/** the last log lines of a node, for failure messages */
export async function logTail(node: Shoal, lines = 30, filter?: (msg: string) => boolean): Promise<string> {
  const all = await node.logs()
  return all
    .filter((l) => filter === undefined || filter(l.msg))
    .slice(-lines)
    .map((l) => JSON.stringify(l))
    .join('\n')
}
