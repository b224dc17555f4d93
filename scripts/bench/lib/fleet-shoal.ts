/**
 * Shoal on every node of a fan-out fleet: one daemon per node namespace, its registry mirror on
 * that namespace's 127.0.0.1 (as a node's runtime sees it), its libp2p and peer data ports on
 * the node's fleet address, every node but the first bootstrapped to the first by static
 * address, all in one private swarm (a shared swarm key).
 *
 * Daemons are started through the Fleet, so its teardown kills them; the node's agent
 * (fleet-agents.ts) reaches their loopback-only HTTP endpoints.
 */
import { execFileSync, type ChildProcess } from 'node:child_process'
import { closeSync, cpSync, existsSync, mkdirSync, openSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FleetAgent } from './fleet-agents.js'
import type { Fleet, Host } from './netns.js'

/** dist/scripts/bench/lib → dist/src/cli/main.js */
export const DEFAULT_SHOAL_MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src', 'cli', 'main.js')
export const SHOAL_PORT = 5050
export const P2P_PORT = 4001
export const PEER_DATA_PORT = 4002
const STOP_GRACE_MS = 5_000

export interface ShoalNodeOptions {
  /** the daemon's entry script (dist/src/cli/main.js) */
  main: string
  dataDir: string
  logFile: string
  /** REGISTRY=URL */
  upstream: string
  defaultRegistry: string
  /** libp2p multiaddrs to bootstrap through (none for the first node) */
  bootstrap: string[]
  swarmKeyFile?: string
  logLevel?: string
  /** extra SHOAL_* variables (e.g. SHOAL_P2P_ENCRYPT=false) */
  env?: Record<string, string>
  /** extra daemon flags */
  args?: string[]
  /** flags for node itself, before the entry script (V8 flags NODE_OPTIONS does not take, e.g. --trace-gc) */
  nodeFlags?: string[]
}

export interface ShoalNode {
  readonly host: Host
  readonly child: ChildProcess
  readonly logFile: string
  /** http://127.0.0.1:5050, inside the node's namespace */
  readonly url: string
  /** /ip4/ADDR/tcp/4001 */
  readonly p2pAddr: string
  running(): boolean
  /** SIGKILL the daemon (a node dying mid-transfer) */
  kill(): void
  stop(): Promise<void>
}

export interface SwarmStatusView {
  peerId?: string
  connectedPeers?: number
  routingTableSize?: number
  joined?: boolean
  bytesFromPeers?: number
  bytesToPeers?: number
}

/** `/ip4/ADDR/tcp/4001` */
export function p2pAddr(host: Host): string {
  return `/ip4/${host.addr}/tcp/${P2P_PORT}`
}

export function startShoalNode(fleet: Fleet, host: Host, opts: ShoalNodeOptions): ShoalNode {
  mkdirSync(opts.dataDir, { recursive: true })
  const args = [
    ...(opts.nodeFlags ?? []),
    opts.main,
    'daemon',
    '--listen', `127.0.0.1:${SHOAL_PORT}`,
    '--data-dir', opts.dataDir,
    '--upstream', opts.upstream,
    '--default-registry', opts.defaultRegistry,
    '--log-level', opts.logLevel ?? 'info',
    '--p2p-listen', p2pAddr(host),
    '--peer-listen', `${host.addr}:${PEER_DATA_PORT}`,
  ]
  for (const b of opts.bootstrap) args.push('--bootstrap', b)
  if (opts.swarmKeyFile !== undefined) args.push('--swarm-key', opts.swarmKeyFile)
  args.push(...(opts.args ?? []))
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SHOAL_') && !k.toUpperCase().endsWith('_PROXY')) env[k] = v
  Object.assign(env, opts.env ?? {})
  const fd = openSync(opts.logFile, 'a')
  let child: ChildProcess
  try {
    child = fleet.spawn(host, process.execPath, args, { stdio: ['ignore', fd, fd], env })
  } finally {
    closeSync(fd)
  }
  let done = false
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      done = true
      resolve()
    })
    child.once('error', () => {
      done = true
      resolve()
    })
  })
  const signal = (sig: NodeJS.Signals): void => {
    if (done || child.pid === undefined) return
    try {
      process.kill(-child.pid, sig)
    } catch {
      // gone
    }
  }
  return {
    host,
    child,
    logFile: opts.logFile,
    url: `http://127.0.0.1:${SHOAL_PORT}`,
    p2pAddr: p2pAddr(host),
    running: () => !done,
    kill: () => signal('SIGKILL'),
    stop: async () => {
      signal('SIGTERM')
      const timer = setTimeout(() => signal('SIGKILL'), STOP_GRACE_MS)
      await exited
      clearTimeout(timer)
    },
  }
}

/** Writes a new swarm key with the daemon's own `swarm-key` command. */
export function writeSwarmKey(main: string, file: string): void {
  const key = execFileSync(process.execPath, [main, 'swarm-key'], { timeout: 30_000 })
  writeFileSync(file, key, { mode: 0o600 })
}

/**
 * Copies the daemon's build (dist/src, config, package.json; node_modules linked) into dir, so a
 * rebuild of the shared tree during a run cannot change the daemons being measured. Returns the
 * copy's entry point, or main itself when it is not laid out as <root>/dist/src/cli/main.js.
 */
export function snapshotShoal(main: string, dir: string): string {
  const root = resolve(main, '..', '..', '..', '..')
  if (resolve(root, 'dist', 'src', 'cli', 'main.js') !== resolve(main) || !existsSync(join(root, 'package.json'))) return main
  mkdirSync(join(dir, 'dist'), { recursive: true })
  cpSync(join(root, 'dist', 'src'), join(dir, 'dist', 'src'), { recursive: true })
  if (existsSync(join(root, 'config'))) cpSync(join(root, 'config'), join(dir, 'config'), { recursive: true })
  cpSync(join(root, 'package.json'), join(dir, 'package.json'))
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'))
  return join(dir, 'dist', 'src', 'cli', 'main.js')
}

/** the daemon's readiness answer, through the node's agent */
export interface Readiness {
  ready?: boolean
  swarm?: { joined?: boolean; peers?: number }
}

export async function readiness(agent: FleetAgent, url: string): Promise<Readiness | undefined> {
  return await agent.getJson<Readiness>(`${url}/readyz`, 2_000).catch(() => undefined)
}

/**
 * Waits until every node's /readyz answers and says the swarm is joined (or, with p2p off,
 * that it is ready). Throws naming the nodes that are not, with their log tails.
 */
export async function waitJoined(nodes: { shoal: ShoalNode; agent: FleetAgent }[], timeoutMs: number, requireSwarm = true): Promise<number> {
  const t0 = Date.now()
  const pending = new Set(nodes)
  while (pending.size > 0) {
    for (const n of [...pending]) {
      if (!n.shoal.running()) throw new Error(`shoal on ${n.shoal.host.name} exited while starting:\n${tail(n.shoal.logFile)}`)
      const r = await readiness(n.agent, n.shoal.url)
      if (r?.ready === true && (!requireSwarm || r.swarm?.joined === true)) pending.delete(n)
    }
    if (pending.size === 0) break
    if (Date.now() - t0 > timeoutMs) {
      const names = [...pending].map((n) => n.shoal.host.name)
      const first = [...pending][0]!
      throw new Error(`not joined after ${timeoutMs} ms: ${names.join(', ')}; log of ${first.shoal.host.name}:\n${tail(first.shoal.logFile)}`)
    }
    await sleep(200)
  }
  return (Date.now() - t0) / 1000
}

/** routing tables that none grew for this long count as settled (see waitTables) */
const STABLE_MS = 5_000

/**
 * Waits until the fleet's DHT routing tables have settled: every one holds `want` peers, or none
 * has grown for STABLE_MS (kad-dht does not fill every table with every node), or `timeoutMs`
 * passed. A fleet's daemons run long before an image is pulled; a round that starts the moment
 * the last daemon joined measures a swarm still forming (dials, handshakes, half-empty tables).
 * Returns how long it waited and the smallest table at the end.
 */
export async function waitTables(nodes: { shoal: ShoalNode; agent: FleetAgent }[], want: number, timeoutMs: number): Promise<{ seconds: number; smallest: number }> {
  const t0 = Date.now()
  let last = ''
  let lastChange = t0
  for (;;) {
    const sizes = await Promise.all(
      nodes.map(async (n) => {
        const metrics = await n.agent.get(`${n.shoal.url}/metrics`, 3_000).catch(() => undefined)
        return metrics === undefined ? 0 : metricValue(metrics.body, 'shoal_p2p_routing_table_peers')
      }),
    )
    const smallest = Math.min(...sizes)
    if (sizes.join() !== last) {
      last = sizes.join()
      lastChange = Date.now()
    }
    const now = Date.now()
    if (smallest >= want || now - lastChange >= STABLE_MS || now - t0 > timeoutMs) return { seconds: (now - t0) / 1000, smallest }
    await sleep(500)
  }
}

/** The value of a Prometheus sample `name{labels}` (labels in any order), or 0 when absent. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0
  let found = false
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line)
    if (m === null || m[1] !== name) continue
    const have = new Map<string, string>()
    for (const pair of (m[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have.set(pair[1]!, pair[2]!)
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) {
      total += Number(m[4])
      found = true
    }
  }
  return found ? total : 0
}

export interface NodeCounters {
  originBytes: number
  peerBytes: number
  bytesFromPeers: number
  bytesToPeers: number
  connectedPeers: number
}

/** Blob bytes fetched by source (from /metrics) and peer traffic (from /api/v1/status) of one node. */
export async function nodeCounters(agent: FleetAgent, url: string): Promise<NodeCounters | undefined> {
  const metrics = await agent.get(`${url}/metrics`, 3_000).catch(() => undefined)
  if (metrics === undefined || metrics.status !== 200) return undefined
  const status = await agent.getJson<{ p2p?: SwarmStatusView; swarm?: SwarmStatusView }>(`${url}/api/v1/status`, 3_000).catch(() => undefined)
  const p2p = status?.p2p ?? status?.swarm
  return {
    originBytes: metricValue(metrics.body, 'shoal_transfer_fetched_bytes_total', { source: 'origin' }),
    peerBytes: metricValue(metrics.body, 'shoal_transfer_fetched_bytes_total', { source: 'peer' }),
    bytesFromPeers: p2p?.bytesFromPeers ?? 0,
    bytesToPeers: p2p?.bytesToPeers ?? 0,
    connectedPeers: p2p?.connectedPeers ?? 0,
  }
}

export function tail(file: string, lines = 25): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return '(no log)'
  }
}
