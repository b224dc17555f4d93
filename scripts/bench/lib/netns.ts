/**
 * A fleet of hosts on one machine, built from Linux network namespaces (see
 * /work/shared/notes/fleet-on-one-machine.md):
 *
 *   <prefix>-<run>-br          one namespace holding the bridge `br0`
 *   <prefix>-<run>-<host>      one namespace per host, with `lo` up and `eth0` (a veth) whose
 *                              peer `p<i>` sits in the bridge namespace, enslaved to `br0`
 *
 * Addresses come from the benchmarking range 198.18.0.0/15 (host i gets 198.18.0.0 + i + 1).
 * A host's upload is capped with tbf on its own `eth0`, its download with tbf on the bridge-side
 * peer (egress toward the host). tbf's bucket is max(128 KiB, 10 ms of traffic): a smaller bucket
 * cannot hold a GSO segment and the link collapses (the "tbf pitfall" in the notes).
 *
 * Nothing touches the machine's own network namespace: every link is created inside the bridge
 * namespace with its peer moved straight into the host's namespace. Names carry a per-run id, so
 * parallel runs never collide. `teardown()` kills the processes started through the fleet (and
 * anything else left inside its namespaces), then deletes every namespace; it is idempotent and
 * also runs on process exit, SIGINT, SIGTERM and SIGHUP.
 *
 * Needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2.
 */
import { type ChildProcess, execFile, execFileSync, type SpawnOptions, spawn as spawnChild } from 'node:child_process'
import { randomBytes } from 'node:crypto'

export interface HostSpec {
  /** short name, [a-z0-9]+ (e.g. `origin`, `n07`); the namespace is `<prefix>-<run>-<name>` */
  name: string
  /** cap on what the host sends, Mbit/s; undefined = uncapped */
  uploadMbit?: number
  /** cap on what the host receives, Mbit/s; undefined = uncapped */
  downloadMbit?: number
}

export interface FleetOptions {
  hosts: HostSpec[]
  /** namespace name prefix; default `sb` (shoal bench) */
  prefix?: string
  /** default: random, with this process's pid in it */
  runId?: string
  /** tbf queue latency (sets its byte limit together with rate and burst); default 50 ms */
  tbfLatencyMs?: number
  /** how long killed processes get between SIGTERM and SIGKILL in teardown(); default 2 s */
  stopGraceMs?: number
}

export interface Host {
  readonly name: string
  /** the namespace name, for `ip netns exec` */
  readonly ns: string
  /** IPv4 address of eth0 */
  readonly addr: string
  /** index in the fleet, 0-based */
  readonly index: number
  /** the host-side device (always `eth0`) */
  readonly dev: string
  /** the bridge-side peer, in the bridge namespace */
  readonly bridgePort: string
  uploadMbit: number | undefined
  downloadMbit: number | undefined
}

export interface Rates {
  uploadMbit?: number | undefined
  downloadMbit?: number | undefined
}

export interface ExecOptions {
  /** default 60 s */
  timeoutMs?: number
  input?: string
  env?: NodeJS.ProcessEnv
}

export interface ExecResult {
  stdout: string
  stderr: string
}

export class NetnsError extends Error {
  readonly code: string
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'NetnsError'
    this.code = code
  }
}

/** a namespace name or a host of a fleet */
export type NsRef = string | Host

const ADDRESS_BASE = (198 << 24) | (18 << 16) // 198.18.0.0
const PREFIX_LEN = 15
const MAX_HOSTS = (1 << (32 - PREFIX_LEN)) - 3
const MIN_BURST_BYTES = 128 * 1024
const BURST_WINDOW_S = 0.01
const DEFAULT_TBF_LATENCY_MS = 50
const DEFAULT_STOP_GRACE_MS = 2_000
const DEFAULT_EXEC_TIMEOUT_MS = 60_000
const BRIDGE = 'br0'
const HOST_DEV = 'eth0'
const NAME_RE = /^[a-z0-9]+$/
const DEV_RE = /^[\w.-]{1,15}$/
const PREFIX_RE = /^[a-z][a-z0-9]{0,11}$/
const SIGNAL_EXIT: Record<string, number> = { SIGHUP: 129, SIGINT: 130, SIGTERM: 143 }

/** `ip netns exec NS` as an argv prefix (for helpers that take a spawn prefix) */
export function nsPrefix(ns: NsRef): string[] {
  return ['ip', 'netns', 'exec', nsName(ns)]
}

function nsName(ns: NsRef): string {
  return typeof ns === 'string' ? ns : ns.ns
}

/** the fleet's address for host index i: 198.18.0.0 + i + 1 */
export function hostAddress(index: number): string {
  if (!Number.isInteger(index) || index < 0 || index >= MAX_HOSTS) throw new NetnsError('BAD_INDEX', `host index ${index} out of range`)
  const n = (ADDRESS_BASE + index + 1) >>> 0
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.')
}

/** tbf bucket for a rate: max(128 KiB, 10 ms of traffic) */
export function tbfBurstBytes(rateMbit: number): number {
  return Math.max(MIN_BURST_BYTES, Math.ceil(((rateMbit * 1e6) / 8) * BURST_WINDOW_S))
}

/** Runs a command; rejects with its stderr on a non-zero exit. */
export function run(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024, env: opts.env ?? process.env, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        if (err !== null) {
          reject(new NetnsError('EXEC_FAILED', `${[cmd, ...args].join(' ')} failed: ${stderr.trim() || err.message}`, { cause: err }))
          return
        }
        resolve({ stdout, stderr })
      },
    )
    if (opts.input !== undefined) child.stdin?.end(opts.input)
  })
}

function runSync(cmd: string, args: readonly string[]): string | undefined {
  try {
    return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 }).toString()
  } catch {
    return undefined
  }
}

// ---- fleets alive in this process, torn down on exit ----------------------------------------

const liveFleets = new Set<Fleet>()
let hooksInstalled = false

function installHooks(): void {
  if (hooksInstalled) return
  hooksInstalled = true
  process.on('exit', () => {
    for (const fleet of liveFleets) fleet.teardownSync()
  })
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      for (const fleet of liveFleets) fleet.teardownSync()
      process.exit(SIGNAL_EXIT[signal] ?? 1)
    })
  }
}

export class Fleet {
  readonly runId: string
  readonly prefix: string
  /** the bridge namespace */
  readonly bridgeNs: string
  readonly hosts: readonly Host[]
  private readonly byName = new Map<string, Host>()
  private readonly created: string[] = []
  private readonly children = new Set<ChildProcess>()
  private readonly tbfLatencyMs: number
  private readonly stopGraceMs: number
  private tornDown: Promise<void> | undefined
  private dead = false

  private constructor(opts: FleetOptions) {
    this.prefix = opts.prefix ?? 'sb'
    if (!PREFIX_RE.test(this.prefix)) throw new NetnsError('BAD_NAME', `bad namespace prefix "${this.prefix}"`)
    this.runId = opts.runId ?? `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`
    if (!NAME_RE.test(this.runId)) throw new NetnsError('BAD_NAME', `bad run id "${this.runId}"`)
    this.bridgeNs = `${this.prefix}-${this.runId}-br`
    this.tbfLatencyMs = opts.tbfLatencyMs ?? DEFAULT_TBF_LATENCY_MS
    this.stopGraceMs = opts.stopGraceMs ?? DEFAULT_STOP_GRACE_MS
    if (opts.hosts.length === 0) throw new NetnsError('NO_HOSTS', 'a fleet needs at least one host')
    const hosts: Host[] = []
    opts.hosts.forEach((spec, index) => {
      if (!NAME_RE.test(spec.name) || spec.name === 'br') throw new NetnsError('BAD_NAME', `bad host name "${spec.name}"`)
      if (this.byName.has(spec.name)) throw new NetnsError('BAD_NAME', `duplicate host name "${spec.name}"`)
      checkRate(spec.uploadMbit)
      checkRate(spec.downloadMbit)
      const host: Host = {
        name: spec.name,
        ns: `${this.prefix}-${this.runId}-${spec.name}`,
        addr: hostAddress(index),
        index,
        dev: HOST_DEV,
        bridgePort: `p${index}`,
        uploadMbit: spec.uploadMbit,
        downloadMbit: spec.downloadMbit,
      }
      hosts.push(host)
      this.byName.set(spec.name, host)
    })
    this.hosts = hosts
  }

  /** Builds the fleet; on any failure, whatever was made is deleted again. */
  static async create(opts: FleetOptions): Promise<Fleet> {
    if (process.getuid?.() !== 0) throw new NetnsError('NOT_ROOT', 'network namespaces need root')
    const fleet = new Fleet(opts)
    liveFleets.add(fleet)
    installHooks()
    try {
      await fleet.build()
    } catch (err) {
      await fleet.teardown()
      throw err
    }
    return fleet
  }

  host(name: string): Host {
    const host = this.byName.get(name)
    if (host === undefined) throw new NetnsError('NO_HOST', `no host "${name}" in fleet ${this.runId}`)
    return host
  }

  /** every namespace this fleet made (bridge first) */
  namespaces(): string[] {
    return [...this.created]
  }

  private async addNs(name: string): Promise<void> {
    await run('ip', ['netns', 'add', name])
    this.created.push(name)
  }

  private async build(): Promise<void> {
    const br = this.bridgeNs
    await this.addNs(br)
    await ipBatch(br, ['link set lo up', `link add ${BRIDGE} type bridge`, `link set ${BRIDGE} up`])
    for (const host of this.hosts) {
      await this.addNs(host.ns)
      // created inside the bridge namespace; the peer goes straight into the host's namespace
      await run('ip', ['-n', br, 'link', 'add', host.bridgePort, 'type', 'veth', 'peer', 'name', host.dev, 'netns', host.ns])
      await ipBatch(br, [`link set ${host.bridgePort} master ${BRIDGE}`, `link set ${host.bridgePort} up`])
      await ipBatch(host.ns, ['link set lo up', `addr add ${host.addr}/${PREFIX_LEN} dev ${host.dev}`, `link set ${host.dev} up`])
      await this.applyRates(host)
    }
  }

  private async applyRates(host: Host): Promise<void> {
    await this.setTbf(host.ns, host.dev, host.uploadMbit)
    await this.setTbf(this.bridgeNs, host.bridgePort, host.downloadMbit)
  }

  private async setTbf(ns: string, dev: string, rateMbit: number | undefined): Promise<void> {
    if (rateMbit === undefined) {
      // back to the default qdisc; fails harmlessly when there is no root qdisc of ours
      await run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'del', 'dev', dev, 'root']).catch(() => {})
      return
    }
    const burst = tbfBurstBytes(rateMbit)
    await run('ip', [
      'netns', 'exec', ns,
      'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'tbf',
      'rate', `${rateMbit}mbit`, 'burst', String(burst), 'latency', `${this.tbfLatencyMs}ms`,
    ])
  }

  /** Changes a host's caps (undefined = uncapped); keeps the ones not given. */
  async setRates(name: string, rates: Rates): Promise<void> {
    const host = this.host(name)
    if ('uploadMbit' in rates) {
      checkRate(rates.uploadMbit)
      host.uploadMbit = rates.uploadMbit
    }
    if ('downloadMbit' in rates) {
      checkRate(rates.downloadMbit)
      host.downloadMbit = rates.downloadMbit
    }
    await this.applyRates(host)
  }

  /** Runs a command inside a namespace to completion; rejects on a non-zero exit. */
  exec(ns: NsRef, cmd: string, args: readonly string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
    this.assertAlive()
    return run('ip', ['netns', 'exec', nsName(ns), cmd, ...args], opts)
  }

  /**
   * Starts a long-running command inside a namespace, in its own process group. It is tracked:
   * teardown() stops it (SIGTERM to the group, SIGKILL after the grace period). `ip netns exec`
   * execs the command, so `child.pid` is the command's own pid.
   */
  spawn(ns: NsRef, cmd: string, args: readonly string[] = [], opts: SpawnOptions = {}): ChildProcess {
    this.assertAlive()
    const child = spawnChild('ip', ['netns', 'exec', nsName(ns), cmd, ...args], { stdio: 'ignore', ...opts, detached: true })
    this.children.add(child)
    const forget = (): void => {
      this.children.delete(child)
    }
    child.once('exit', forget)
    child.once('error', forget)
    return child
  }

  /** Bytes sent by a device inside a namespace (default the host's eth0), from the kernel's counters. */
  async txBytes(ns: NsRef, dev = HOST_DEV): Promise<number> {
    this.assertAlive()
    return await txBytes(ns, dev)
  }

  async rxBytes(ns: NsRef, dev = HOST_DEV): Promise<number> {
    this.assertAlive()
    return await rxBytes(ns, dev)
  }

  /** Pids of every process inside one of this fleet's namespaces. */
  async pids(): Promise<number[]> {
    const out: number[] = []
    for (const ns of this.created) {
      const { stdout } = await run('ip', ['netns', 'pids', ns]).catch(() => ({ stdout: '' }))
      out.push(...parsePids(stdout))
    }
    return out
  }

  /**
   * Stops the tracked processes, kills whatever else still runs inside the fleet's namespaces,
   * and deletes every namespace (their veths and qdiscs go with them). Idempotent.
   */
  teardown(): Promise<void> {
    this.tornDown ??= (async () => {
      this.dead = true
      const waits: Promise<void>[] = []
      for (const child of this.children) {
        if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) continue
        const pid = child.pid
        waits.push(
          new Promise<void>((resolve) => {
            const timer = setTimeout(() => killGroup(pid, 'SIGKILL'), this.stopGraceMs)
            child.once('exit', () => {
              clearTimeout(timer)
              resolve()
            })
            killGroup(pid, 'SIGTERM')
          }),
        )
      }
      await Promise.all(waits)
      this.children.clear()
      for (const ns of [...this.created].reverse()) {
        const { stdout } = await run('ip', ['netns', 'pids', ns]).catch(() => ({ stdout: '' }))
        for (const pid of parsePids(stdout)) killPid(pid, 'SIGKILL')
        await run('ip', ['netns', 'del', ns]).catch(() => {})
      }
      this.created.length = 0
      liveFleets.delete(this)
    })()
    return this.tornDown
  }

  /** The same as teardown(), synchronous, for exit and signal handlers. */
  teardownSync(): void {
    this.dead = true
    for (const child of this.children) {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) killGroup(child.pid, 'SIGKILL')
    }
    this.children.clear()
    for (const ns of [...this.created].reverse()) {
      for (const pid of parsePids(runSync('ip', ['netns', 'pids', ns]) ?? '')) killPid(pid, 'SIGKILL')
      runSync('ip', ['netns', 'del', ns])
    }
    this.created.length = 0
    liveFleets.delete(this)
  }

  private assertAlive(): void {
    if (this.dead) throw new NetnsError('TORN_DOWN', `fleet ${this.runId} is torn down`)
  }
}

/**
 * Bytes sent by a device inside a namespace: `ip netns exec NS cat /sys/class/net/DEV/statistics/tx_bytes`
 * (ip netns exec mounts the namespace's own sysfs). Usable from any process, e.g. a benchmark
 * that runs inside one of the fleet's namespaces.
 */
export async function txBytes(ns: NsRef, dev = HOST_DEV): Promise<number> {
  return await readCounter(ns, dev, 'tx_bytes')
}

export async function rxBytes(ns: NsRef, dev = HOST_DEV): Promise<number> {
  return await readCounter(ns, dev, 'rx_bytes')
}

async function readCounter(ns: NsRef, dev: string, name: string): Promise<number> {
  if (!DEV_RE.test(dev)) throw new NetnsError('BAD_NAME', `bad device name "${dev}"`)
  const { stdout } = await run('ip', ['netns', 'exec', nsName(ns), 'cat', `/sys/class/net/${dev}/statistics/${name}`])
  const value = Number(stdout.trim())
  if (stdout.trim() === '' || !Number.isSafeInteger(value)) {
    throw new NetnsError('BAD_COUNTER', `unreadable ${name} of ${dev} in ${nsName(ns)}: "${stdout.trim()}"`)
  }
  return value
}

function checkRate(rate: number | undefined): void {
  if (rate !== undefined && !(Number.isFinite(rate) && rate > 0)) throw new NetnsError('BAD_RATE', `bad rate ${rate} Mbit/s`)
}

async function ipBatch(ns: string, commands: string[]): Promise<void> {
  await run('ip', ['-n', ns, '-batch', '-'], { input: commands.join('\n') + '\n' })
}

function parsePids(text: string): number[] {
  return text
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s))
    .map(Number)
    .filter((pid) => pid !== process.pid)
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal)
  } catch {
    killPid(pid, signal)
  }
}

function killPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal)
  } catch {
    // already gone
  }
}
