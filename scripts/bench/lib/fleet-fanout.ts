/**
 * A fan-out fleet on one machine: N node namespaces and an origin namespace on one bridge, every
 * link capped both ways (netns.ts), docker-registry as the origin (fleet-origin.ts), an agent per
 * node (fleet-agents.ts), Shoal per node (fleet-shoal.ts), and rounds in which every node pulls
 * one image at its scheduled start, through its own Shoal (`shoal`) or straight from origin
 * (`baseline`), with a light verifying puller or containerd's ctr.
 *
 * A round measures, per node, the seconds from its own start to its last verified byte; for the
 * fleet, the bytes the origin's link sent (its kernel tx counter before and after) and, from the
 * origin's access log, the blob bytes it sent to each node. ctr rounds use a fresh containerd
 * per ctr node (so no content is left from an earlier round) and re-hash every blob in its
 * content store afterwards.
 *
 * Used by scripts/bench/fanout.ts and test/e2e/fanout.test.ts.
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { type Containerd, startContainerd } from '../../../test/helpers/containerd.js'
import { type AgentReply, FleetAgent } from './fleet-agents.js'
import { type FleetImage, type FleetOrigin, type ImageRequest, startFleetOrigin } from './fleet-origin.js'
import {
  type NodeCounters,
  nodeCounters,
  p2pAddr,
  type ShoalNode,
  snapshotShoal,
  startShoalNode,
  waitJoined,
  waitTables,
  writeSwarmKey,
} from './fleet-shoal.js'
import { Fleet, type Host } from './netns.js'
import { machineCpuTimes, processCpuTimes } from './measure.js'

export type Client = 'light' | 'ctr'
export type Mode = 'shoal' | 'baseline'

export interface FanoutFleetOptions {
  nodes: number
  /** every node's link, both ways, Mbit/s */
  rateMbit: number
  /** the origin's link, both ways; default rateMbit */
  originRateMbit?: number
  images: ImageRequest[]
  /** a temp dir for stores, logs and containerd; the caller removes it */
  work: string
  /** the client of each node (cycled when shorter than the fleet) */
  clients: Client[]
  /** Shoal's entry point; default dist/src/cli/main.js of this build */
  shoalMain: string
  /** copy the daemon's build first, so a rebuild during the run cannot touch it; default false */
  snapshot?: boolean
  /** namespace prefix; default `sbf` */
  prefix?: string
  /** Shoal's log level; default info */
  logLevel?: string
  /** extra SHOAL_* variables for every daemon */
  shoalEnv?: Record<string, string>
  /** flags for node itself in every daemon (see ShoalNodeOptions.nodeFlags) */
  shoalNodeFlags?: string[]
  /** ctr: `images pull` (fetch and unpack) rather than `content fetch` (fetch only); default true */
  ctrUnpack?: boolean
  /**
   * start a round as soon as every daemon has joined, before their routing tables hold the whole
   * fleet (default false: wait up to SETTLE_TIMEOUT_MS for the tables to settle, see waitTables)
   */
  cold?: boolean
  /** progress lines (default: none) */
  log?: (line: string) => void
}

export interface FleetNode {
  readonly index: number
  readonly name: string
  readonly host: Host
  readonly agent: FleetAgent
  readonly client: Client
  shoal: ShoalNode | undefined
  containerd: Containerd | undefined
}

export interface NodeResult {
  name: string
  addr: string
  client: Client
  ok: boolean
  error?: string
  /** scheduled start, relative to the round's first start, ms */
  offsetMs: number
  /** own start → last byte verified (light) or ctr's exit */
  seconds: number
  /** epoch ms */
  startedAt: number
  /** bytes the client received (light), or the image bytes found verified in containerd's store (ctr) */
  bytes: number
  /** every blob (and the manifest) hashed to its digest */
  verified: boolean
  /** origin blob bytes sent to this node's address (origin access log) */
  originBlobBytes: number
  /** of those, the bytes a client fetched itself rather than Shoal (in shoal mode: a runtime falling back to origin) */
  directBlobBytes: number
  /** this node's Shoal counters during the round (shoal mode) */
  shoal?: NodeCounters
  /** the node's Shoal was killed during the round */
  killed?: boolean
}

export interface RoundResult {
  mode: Mode
  image: { name: string; tag: string; digest: string; bytes: number }
  nodes: NodeResult[]
  /** origin link tx bytes, right after the last node finished and after a settle period */
  originTxBytes: number
  originTxBytesAtLastFinish: number
  /** first start → last finish */
  wallSeconds: number
  /**
   * CPU during the round: the whole machine (from /proc/stat), and the CPU seconds of the Shoal
   * daemons, of the clients (agents, with the ctr processes they ran) and of the origin
   */
  cpu: {
    busySeconds: number
    utilisation: number
    /** the busy seconds by kind, machine-wide (softirq: the kernel's packet processing, shaping included) */
    machine: { user: number; system: number; irq: number; softirq: number }
    shoalSeconds: number
    /** the system (kernel) part of shoalSeconds: the daemons' system calls, their sockets' packet paths included */
    shoalSystemSeconds: number
    /** the daemons' minor page faults (4 KiB pages of fresh memory) */
    shoalMinorFaults: number
    /** the daemons' context switches (their threads' voluntary ones are mostly event-loop wake-ups) */
    shoalSwitches: number
    clientSeconds: number
    originSeconds: number
  }
}

export interface RoundOptions {
  mode: Mode
  image: FleetImage
  /** per node, ms after the round's start (default all 0) */
  offsetsMs?: number[]
  /** give up on nodes not done after this long; default from the image size and link rates */
  timeoutMs?: number
  /**
   * Runs alongside the pulls, from the moment they are handed out (e.g. to kill a node's Shoal
   * mid-transfer); the round also waits for it. `before` holds each node's Shoal counters at
   * the round's start (shoal mode), so progress is their difference.
   */
  during?: (ctx: RoundContext) => Promise<void>
}

export interface RoundContext {
  /** epoch ms of the first scheduled start */
  start: number
  before: ReadonlyMap<string, NodeCounters | undefined>
  /** true once every node's pull has ended */
  done(): boolean
  /** how many nodes' pulls have ended */
  finished(): number
}

/** the origin's host in the fleet */
export const ORIGIN = 'origin'
const JOIN_TIMEOUT_MS = 90_000
/** the longest wait for the routing tables to settle (the round starts anyway after it) */
const SETTLE_TIMEOUT_MS = 60_000
const START_LEAD_MS = 300
const SETTLE_MS = 1_000
/** the User-Agent Shoal sends to origin (what tells its requests from a runtime's own) */
const SHOAL_USER_AGENT = 'shoal'
const CONTENT_DIR = join('io.containerd.content.v1.content', 'blobs')

export class FanoutFleet {
  readonly nodes: FleetNode[] = []
  private swarmKey: string | undefined
  private shoalMain: string
  private readonly killed = new Set<string>()

  private constructor(
    readonly opts: FanoutFleetOptions,
    readonly fleet: Fleet,
    readonly origin: FleetOrigin,
  ) {
    this.shoalMain = opts.shoalMain
  }

  /** Builds the namespaces, the origin (with the images pushed) and an agent per node; tears down on failure. */
  static async create(opts: FanoutFleetOptions): Promise<FanoutFleet> {
    const log = opts.log ?? (() => {})
    if (opts.nodes < 1) throw new Error('a fleet needs at least one node')
    const originRate = opts.originRateMbit ?? opts.rateMbit
    const fleet = await Fleet.create({
      prefix: opts.prefix ?? 'sbf',
      hosts: [
        { name: ORIGIN, uploadMbit: originRate, downloadMbit: originRate },
        ...Array.from({ length: opts.nodes }, (_, i) => ({ name: nodeName(i), uploadMbit: opts.rateMbit, downloadMbit: opts.rateMbit })),
      ],
    })
    try {
      log(`fleet ${fleet.runId}: ${opts.nodes} nodes at ${opts.rateMbit} Mbit/s, origin at ${originRate} Mbit/s (both ways)`)
      await mkdir(opts.work, { recursive: true })
      const origin = await startFleetOrigin(fleet, fleet.host(ORIGIN), opts.work, opts.images)
      log(`origin ${origin.url}: ${origin.images.map((i) => `${i.name}:${i.tag} ${i.bytes} bytes in ${i.blobs.length} blobs`).join('; ')}`)
      const ff = new FanoutFleet(opts, fleet, origin)
      if (opts.snapshot === true) ff.shoalMain = snapshotShoal(opts.shoalMain, join(opts.work, 'shoal-build'))
      const agents = await Promise.all(
        Array.from({ length: opts.nodes }, (_, i) => FleetAgent.start(fleet, fleet.host(nodeName(i)), join(opts.work, `agent-${nodeName(i)}.log`))),
      )
      agents.forEach((agent, i) => {
        ff.nodes.push({ index: i, name: nodeName(i), host: agent.host, agent, client: opts.clients[i % opts.clients.length] ?? 'light', shoal: undefined, containerd: undefined })
      })
      for (const node of ff.nodes) {
        if (node.client !== 'ctr') continue
        await writeHostsFile(join(ff.hostsDir(node, 'shoal'), origin.hostPort), origin.url, 'http://127.0.0.1:5050')
        await writeHostsFile(join(ff.hostsDir(node, 'baseline'), origin.hostPort), origin.url, undefined)
      }
      return ff
    } catch (err) {
      await fleet.teardown()
      throw err
    }
  }

  private hostsDir(node: FleetNode, mode: Mode): string {
    return join(this.opts.work, `hosts-${node.name}`, mode)
  }

  /**
   * Starts Shoal on every node (the first one is everyone's bootstrap) and waits until each has
   * joined the swarm, then (unless `cold`) until their routing tables settle.
   * `joinSeconds`: until a round may start, both waits included.
   */
  async startShoal(): Promise<{ joinSeconds: number; settled?: { seconds: number; smallest: number } }> {
    const log = this.opts.log ?? (() => {})
    if (this.swarmKey === undefined) {
      this.swarmKey = join(this.opts.work, 'swarm.key')
      writeSwarmKey(this.shoalMain, this.swarmKey)
    }
    const first = this.nodes[0]!
    for (const node of this.nodes) {
      if (node.shoal?.running() === true) continue
      node.shoal = startShoalNode(this.fleet, node.host, {
        main: this.shoalMain,
        dataDir: join(this.opts.work, `shoal-${node.name}`),
        logFile: join(this.opts.work, `shoal-${node.name}.log`),
        upstream: `${this.origin.hostPort}=${this.origin.url}`,
        defaultRegistry: this.origin.hostPort,
        bootstrap: node === first ? [] : [p2pAddr(first.host)],
        swarmKeyFile: this.swarmKey,
        logLevel: this.opts.logLevel ?? 'info',
        env: this.opts.shoalEnv ?? {},
        nodeFlags: this.opts.shoalNodeFlags,
      })
    }
    const joinSeconds = await waitJoined(
      this.nodes.map((n) => ({ shoal: n.shoal!, agent: n.agent })),
      JOIN_TIMEOUT_MS,
      this.nodes.length > 1,
    )
    log(`shoal: ${this.nodes.length} daemons joined in ${joinSeconds.toFixed(1)} s`)
    if (this.opts.cold === true || this.nodes.length < 2) return { joinSeconds }
    const settled = await waitTables(
      this.nodes.map((n) => ({ shoal: n.shoal!, agent: n.agent })),
      this.nodes.length - 1,
      SETTLE_TIMEOUT_MS,
    )
    log(`shoal: the smallest routing table holds ${settled.smallest} of ${this.nodes.length - 1} peers after ${settled.seconds.toFixed(1)} s more`)
    return { joinSeconds: joinSeconds + settled.seconds, settled }
  }

  async stopShoal(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.shoal?.stop()))
    for (const n of this.nodes) n.shoal = undefined
  }

  /** SIGKILLs a node's Shoal (its result in the running round is marked `killed`). */
  killShoal(node: FleetNode): void {
    this.killed.add(node.name)
    node.shoal?.kill()
  }

  /** the node's Shoal counters, or undefined when it does not answer */
  counters(node: FleetNode): Promise<NodeCounters | undefined> {
    if (node.shoal === undefined || !node.shoal.running()) return Promise.resolve(undefined)
    return nodeCounters(node.agent, node.shoal.url)
  }

  /** Every node pulls the image at its scheduled start; resolves when all are done (or failed, or timed out). */
  async round(ro: RoundOptions): Promise<RoundResult> {
    const { mode, image } = ro
    const offsets = ro.offsetsMs ?? this.nodes.map(() => 0)
    if (mode === 'shoal' && this.nodes.some((n) => n.shoal?.running() !== true && !this.killed.has(n.name))) {
      throw new Error('shoal round: start Shoal first (startShoal)')
    }
    this.killed.clear()
    const ctrNodes = this.nodes.filter((n) => n.client === 'ctr')
    await Promise.all(ctrNodes.map(async (n) => {
      await n.containerd?.close()
      n.containerd = await startContainerd()
    }))
    const before = new Map<string, NodeCounters | undefined>()
    if (mode === 'shoal') for (const n of this.nodes) before.set(n.name, await this.counters(n))
    const logMark = this.origin.accessLog().length
    const tx0 = await this.origin.txBytes()
    const cpu0 = machineCpuTimes()
    const shoalPids = this.nodes.flatMap((n) => (n.shoal?.running() === true && n.shoal.child.pid !== undefined ? [n.shoal.child.pid] : []))
    const agentPids = this.nodes.flatMap((n) => (n.agent.child.pid === undefined ? [] : [n.agent.child.pid]))
    const originPids = this.origin.pid === undefined ? [] : [this.origin.pid]
    const proc0 = new Map([...shoalPids, ...agentPids, ...originPids].map((pid) => [pid, processCpuTimes(pid)]))
    const start = Date.now() + START_LEAD_MS
    const maxOffset = Math.max(0, ...offsets)
    const timeoutMs = ro.timeoutMs ?? defaultTimeoutMs(this.opts, image.bytes, maxOffset)
    let lastFinish = start
    let allDone = false
    let finished = 0
    const pulls = Promise.all(
      this.nodes.map(async (node, i) => {
        const at = start + (offsets[i] ?? 0)
        const reply = await withTimeout(this.pullOn(node, mode, image, at), timeoutMs + (offsets[i] ?? 0))
        lastFinish = Math.max(lastFinish, Date.now())
        finished++
        return reply
      }),
    ).finally(() => {
      allDone = true
    })
    const side = ro.during?.({ start, before, done: () => allDone, finished: () => finished }) ?? Promise.resolve()
    const [replies, sideError] = await Promise.all([pulls, side.then(() => undefined, (err: unknown) => err ?? new Error('during() failed'))])
    if (sideError !== undefined) throw sideError
    const txAtLastFinish = await this.origin.txBytes()
    const cpu1 = machineCpuTimes()
    const spent = (pids: number[], part: 'user' | 'system' | 'both' | 'minorFaults' | 'switches' = 'both'): number =>
      pids.reduce((a, pid) => {
        const was = proc0.get(pid)
        const now = processCpuTimes(pid) ?? was
        if (was === undefined || now === undefined) return a
        const pick = (c: NonNullable<typeof was>): number => (part === 'both' ? c.user + c.system : c[part])
        return a + Math.max(0, pick(now) - pick(was))
      }, 0)
    const procCpu = {
      shoalSeconds: spent(shoalPids),
      shoalSystemSeconds: spent(shoalPids, 'system'),
      shoalMinorFaults: spent(shoalPids, 'minorFaults'),
      shoalSwitches: spent(shoalPids, 'switches'),
      clientSeconds: spent(agentPids),
      originSeconds: spent(originPids),
    }
    await sleep(SETTLE_MS)
    const tx1 = await this.origin.txBytes()
    const byClient = this.origin.blobBytesByClient(logMark)
    const direct = this.origin.blobBytesByClient(logMark, (e) => !e.userAgent.startsWith(SHOAL_USER_AGENT))
    const results: NodeResult[] = []
    for (const [i, node] of this.nodes.entries()) {
      const reply = replies[i]!
      const r: NodeResult = {
        name: node.name,
        addr: node.host.addr,
        client: node.client,
        ok: reply.ok,
        offsetMs: offsets[i] ?? 0,
        seconds: typeof reply['seconds'] === 'number' ? (reply['seconds'] as number) : Number.NaN,
        startedAt: typeof reply['startedAt'] === 'number' ? (reply['startedAt'] as number) : start + (offsets[i] ?? 0),
        bytes: 0,
        verified: false,
        originBlobBytes: byClient.get(node.host.addr) ?? 0,
        directBlobBytes: direct.get(node.host.addr) ?? 0,
      }
      if (reply.error !== undefined) r.error = reply.error
      if (this.killed.has(node.name)) r.killed = true
      if (reply.ok && node.client === 'light') {
        const report = (reply as { report?: { bytes: number; manifestDigest: string; blobs: { digest: string; bytes: number }[] } }).report
        r.bytes = report?.bytes ?? 0
        r.verified = report !== undefined && report.manifestDigest === image.digest && sameBlobs(report.blobs, image.blobs)
        if (!r.verified) r.error = 'pulled content does not match the pushed image'
      } else if (reply.ok && node.containerd !== undefined) {
        const check = await verifyContainerdContent(node.containerd, image)
        r.bytes = check.bytes
        r.verified = check.ok
        if (!check.ok) r.error = check.error
      }
      if (mode === 'shoal') {
        const b = before.get(node.name)
        const a = await this.counters(node)
        if (a !== undefined) {
          r.shoal = {
            originBytes: a.originBytes - (b?.originBytes ?? 0),
            peerBytes: a.peerBytes - (b?.peerBytes ?? 0),
            bytesFromPeers: a.bytesFromPeers - (b?.bytesFromPeers ?? 0),
            bytesToPeers: a.bytesToPeers - (b?.bytesToPeers ?? 0),
            connectedPeers: a.connectedPeers,
          }
        }
      }
      results.push(r)
    }
    for (const n of ctrNodes) {
      await n.containerd?.close()
      n.containerd = undefined
    }
    const busy = cpu1.busy - cpu0.busy
    const total = cpu1.total - cpu0.total
    return {
      mode,
      image: { name: image.name, tag: image.tag, digest: image.digest, bytes: image.bytes },
      nodes: results,
      originTxBytes: tx1 - tx0,
      originTxBytesAtLastFinish: txAtLastFinish - tx0,
      wallSeconds: (lastFinish - start) / 1000,
      cpu: {
        busySeconds: busy,
        utilisation: total > 0 ? busy / total : Number.NaN,
        machine: { user: cpu1.user - cpu0.user, system: cpu1.system - cpu0.system, irq: cpu1.irq - cpu0.irq, softirq: cpu1.softirq - cpu0.softirq },
        ...procCpu,
      },
    }
  }

  private pullOn(node: FleetNode, mode: Mode, image: FleetImage, at: number): Promise<AgentReply> {
    const ref = `${this.origin.hostPort}/${image.name}:${image.tag}`
    if (node.client === 'ctr') {
      const c = node.containerd
      if (c === undefined) return Promise.resolve({ id: 0, ok: false, error: 'no containerd' })
      const unpack = this.opts.ctrUnpack ?? true
      const args = ['--address', c.address, '--namespace', 'default', ...(unpack ? ['images', 'pull'] : ['content', 'fetch'])]
      args.push('--hosts-dir', this.hostsDir(node, mode), '--plain-http')
      if (unpack) args.push('--snapshotter', c.snapshotter)
      args.push(ref)
      return node.agent.run('ctr', args, at)
    }
    const spec =
      mode === 'shoal'
        ? { base: node.shoal?.url ?? 'http://127.0.0.1:5050', name: image.name, reference: image.tag, ns: this.origin.hostPort, expectManifestDigest: image.digest }
        : { base: this.origin.url, name: image.name, reference: image.tag, expectManifestDigest: image.digest }
    return node.agent.pull(spec, at)
  }

  async teardown(): Promise<void> {
    for (const n of this.nodes) n.agent.close()
    await Promise.all(this.nodes.map((n) => n.containerd?.close().catch(() => {})))
    await this.fleet.teardown()
  }
}

export function nodeName(i: number): string {
  return `n${String(i + 1).padStart(2, '0')}`
}

/** a hosts.toml for containerd: the mirror first (when given), then origin */
async function writeHostsFile(dir: string, server: string, mirror: string | undefined): Promise<void> {
  await mkdir(dir, { recursive: true })
  const lines = [`server = ${JSON.stringify(server)}`]
  if (mirror !== undefined) lines.push('', `[host.${JSON.stringify(mirror)}]`, '  capabilities = ["pull", "resolve"]')
  await writeFile(join(dir, 'hosts.toml'), `${lines.join('\n')}\n`)
}

function sameBlobs(got: { digest: string; bytes: number }[], want: { digest: string; size: number }[]): boolean {
  return got.length === want.length && want.every((w, i) => got[i]?.digest === w.digest && got[i]?.bytes === w.size)
}

/** re-hashes the manifest, config and layers in containerd's content store */
export async function verifyContainerdContent(c: Containerd, image: FleetImage): Promise<{ ok: boolean; bytes: number; error?: string }> {
  let bytes = 0
  const wanted = [{ digest: image.digest, size: image.pushed.manifest.length }, ...image.blobs]
  for (const b of wanted) {
    const [algorithm, hex] = b.digest.split(':') as [string, string]
    const file = join(c.root, CONTENT_DIR, algorithm, hex)
    try {
      const hash = createHash(algorithm)
      let size = 0
      for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
        hash.update(chunk as Buffer)
        size += (chunk as Buffer).length
      }
      const got = `${algorithm}:${hash.digest('hex')}`
      if (got !== b.digest || size !== b.size) return { ok: false, bytes, error: `containerd holds ${b.digest} as ${size} bytes hashing to ${got}` }
      bytes += size
    } catch (err) {
      return { ok: false, bytes, error: `containerd's store lacks ${b.digest}: ${(err as Error).message}` }
    }
  }
  return { ok: true, bytes }
}

function defaultTimeoutMs(opts: FanoutFleetOptions, imageBytes: number, maxOffsetMs: number): number {
  const originBps = ((opts.originRateMbit ?? opts.rateMbit) * 1e6) / 8
  // every node from origin, twice over, plus a minute
  return Math.ceil(((2 * opts.nodes * imageBytes) / originBps) * 1000) + maxOffsetMs + 60_000
}

async function withTimeout(p: Promise<AgentReply>, ms: number): Promise<AgentReply> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<AgentReply>((resolve) => {
    timer = setTimeout(() => resolve({ id: 0, ok: false, error: `not done after ${(ms / 1000).toFixed(0)} s` }), ms)
  })
  try {
    return await Promise.race([p.catch((err: Error) => ({ id: 0, ok: false, error: err.message })), timeout])
  } finally {
    clearTimeout(timer)
  }
}
