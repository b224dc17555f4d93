/**
 * Shoal as a pull-through mirror, against the origin it mirrors, in one run:
 *
 *  a. realistic origin: docker-registry in its own namespace behind a 1 Gbit/s link (tbf both
 *     ways); Shoal and the client in a "node" namespace, talking over its loopback. Cold pull
 *     through Shoal (fresh store each round) and warm pull from Shoal's store, each against the
 *     same pull straight from origin.
 *  b. loopback, uncapped (inside the node namespace): Shoal serving a warm blob against
 *     docker-registry serving it from its own disk; Shoal's cold path (origin → verify → store →
 *     client) in MB/s and CPU-seconds per GB, beside a plain node:http file server + sha256 client.
 *  c. Shoal's peak RSS (VmHWM) serving one blob to 4 concurrent clients, warm and cold.
 *
 * Every body pulled is hashed while it streams and must match the digest (the run fails
 * otherwise). Prints tables, then one JSON line (also written to --json FILE).
 *
 * The process first builds the namespaces (scripts/bench/lib/netns.ts), then re-runs itself
 * inside the node namespace (--inner); all temporary files live in one directory that the outer
 * process removes, whatever happens. Needs root and docker-registry (distribution 2.8.x).
 *
 *   scripts/bench/mirror [--size 1GiB] [--rounds 3] [--quick] [--json FILE] [--check]
 */
import { type ChildProcess, spawn } from 'node:child_process'
import {
  closeSync,
  cpSync,
  createReadStream,
  existsSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { createServer, request } from 'node:http'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { pushBlob } from '../../test/helpers/images.js'
import { freePort, type OriginRegistry, startOriginRegistry } from '../../test/helpers/registry.js'
import {
  cpuDuring,
  formatBytes,
  formatRatio,
  max,
  mbps,
  median,
  min,
  parseSizeArg,
  peakRssBytes,
  printTable,
  pullBlob,
  ratio,
  round,
  sampleRss,
  threadCpuDelta,
  threadCpuSeconds,
} from './lib/measure.js'
import { Fleet, nsPrefix, txBytes } from './lib/netns.js'

const GiB = 1024 ** 3
const MiB = 1024 ** 2
const GB = 1e9
const MB = 1e6
/** the origin's link, both directions */
const LINK_MBIT = 1000
const ORIGIN_PORT = 5000
const REPO = 'bench/mirror'
const CAPPED_REGISTRY = 'origin.test'
const LOOPBACK_REGISTRY = 'local.test'
const CONCURRENT_CLIENTS = 4
const FILE_SERVER_HWM = MiB
const DAEMON_READY_TIMEOUT_MS = 30_000
const DAEMON_STOP_GRACE_MS = 10_000
const STORE_COMMIT_TIMEOUT_MS = 30_000
const FLEET_ENV = 'SHOAL_BENCH_FLEET'
const SNAPSHOT_OF_ENV = 'SHOAL_BENCH_DAEMON_SOURCE'

const FLOORS = {
  coldVsDirect: 1.1,
  warmVsDirect: 0.35,
  warmVsRegistryLoopback: 1.5,
  warmPeakRssBytes: 200 * MB,
} as const

const SELF = fileURLToPath(import.meta.url)
/** dist/scripts/bench/mirror.js → dist/src/cli/main.js */
const DEFAULT_DAEMON_MAIN = join(dirname(SELF), '..', '..', 'src', 'cli', 'main.js')

interface Options {
  size: number
  rounds: number
  json: string | undefined
  check: boolean
  parts: Set<string>
  daemonNodeArgs: string[]
  /** the daemon's entry script (another build of Shoal, to compare) */
  daemonMain: string
}

interface FleetInfo {
  originNs: string
  originAddr: string
  nodeNs: string
  linkMbit: number
  /** the daemon entry point the inner process runs (a snapshot of the build, see snapshotDaemon) */
  daemonMain: string
}

/**
 * Copies the daemon's build (dist/src, config, package.json; node_modules linked) into the work
 * dir, so a rebuild of the shared tree in the middle of a run cannot change or break the daemon
 * being measured. Returns the snapshot's entry point, or the original when the layout is not
 * <root>/dist/src/cli/main.js.
 */
function snapshotDaemon(daemonMain: string, work: string): string {
  const root = resolve(daemonMain, '..', '..', '..', '..')
  if (resolve(root, 'dist', 'src', 'cli', 'main.js') !== daemonMain || !existsSync(join(root, 'package.json'))) return daemonMain
  const snap = join(work, 'shoal-build')
  mkdirSync(join(snap, 'dist'), { recursive: true })
  cpSync(join(root, 'dist', 'src'), join(snap, 'dist', 'src'), { recursive: true })
  if (existsSync(join(root, 'config'))) cpSync(join(root, 'config'), join(snap, 'config'), { recursive: true })
  cpSync(join(root, 'package.json'), join(snap, 'package.json'))
  symlinkSync(join(root, 'node_modules'), join(snap, 'node_modules'))
  return join(snap, 'dist', 'src', 'cli', 'main.js')
}

// ---- arguments -------------------------------------------------------------------------------

function parseOptions(argv: string[]): { options: Options; inner: boolean; fileServer: string | undefined } {
  const { values } = parseArgs({
    args: argv,
    options: {
      size: { type: 'string' },
      rounds: { type: 'string' },
      quick: { type: 'boolean', default: false },
      json: { type: 'string' },
      check: { type: 'boolean', default: false },
      only: { type: 'string' },
      'daemon-node-args': { type: 'string' },
      daemon: { type: 'string' },
      inner: { type: 'boolean', default: false },
      'file-server': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  })
  if (values.help) {
    process.stdout.write(
      [
        'Usage: scripts/bench/mirror [--size 1GiB] [--rounds 3] [--quick] [--json FILE] [--check]',
        '                            [--only a,b,c] [--daemon-node-args="--cpu-prof --cpu-prof-dir=DIR"]',
        '                            [--daemon PATH/TO/dist/src/cli/main.js]   (another build, to compare)',
        '  --quick   256 MiB, 2 rounds',
        '  --check   exit 3 when a floor is missed',
        '',
      ].join('\n'),
    )
    process.exit(0)
  }
  const quick = values.quick === true
  const size = values.size !== undefined ? parseSizeArg(values.size) : quick ? 256 * MiB : GiB
  const rounds = values.rounds !== undefined ? Number(values.rounds) : quick ? 2 : 3
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`bad --rounds "${values.rounds}"`)
  const parts = new Set((values.only ?? 'a,b,c').split(',').map((s) => s.trim()))
  for (const p of parts) if (!['a', 'b', 'c'].includes(p)) throw new Error(`bad --only part "${p}"`)
  return {
    options: {
      size,
      rounds,
      json: values.json,
      check: values.check === true,
      parts,
      daemonNodeArgs: (values['daemon-node-args'] ?? '').split(/\s+/).filter((s) => s !== ''),
      daemonMain: resolve(values.daemon ?? DEFAULT_DAEMON_MAIN),
    },
    inner: values.inner === true,
    fileServer: values['file-server'],
  }
}

// ---- outer: the namespaces ---------------------------------------------------------------------

async function outer(argv: string[], opts: Options): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('this benchmark builds network namespaces: run it as root')
  if (!existsSync(opts.daemonMain)) throw new Error(`${opts.daemonMain} is missing: build first (npx tsc -p tsconfig.json)`)
  const work = mkdtempSync(join(tmpdir(), 'shoal-bench-mirror-'))
  const removeWork = (): void => rmSync(work, { recursive: true, force: true })
  process.on('exit', removeWork)
  let fleet: Fleet | undefined
  try {
    fleet = await Fleet.create({
      prefix: 'sbm',
      hosts: [{ name: 'origin', uploadMbit: LINK_MBIT, downloadMbit: LINK_MBIT }, { name: 'node' }],
    })
    const origin = fleet.host('origin')
    const node = fleet.host('node')
    const info: FleetInfo = {
      originNs: origin.ns,
      originAddr: origin.addr,
      nodeNs: node.ns,
      linkMbit: LINK_MBIT,
      daemonMain: snapshotDaemon(opts.daemonMain, work),
    }
    const child = fleet.spawn(node, process.execPath, [SELF, ...argv, '--inner'], {
      stdio: 'inherit',
      // every temp dir (registry.ts uses os.tmpdir()) lands in `work`, removed below
      env: { ...process.env, TMPDIR: work, [FLEET_ENV]: JSON.stringify(info), [SNAPSHOT_OF_ENV]: opts.daemonMain },
    })
    const code = await new Promise<number>((done) => {
      child.once('exit', (c, signal) => done(c ?? (signal === null ? 1 : 128)))
      child.once('error', () => done(1))
    })
    process.exitCode = code
  } finally {
    await fleet?.teardown()
    removeWork()
  }
}

// ---- a plain node:http file server (child process, for part b) --------------------------------

function fileServer(file: string): void {
  const size = statSync(file).size
  const server = createServer((req, res) => {
    if (req.method !== 'GET') {
      res.writeHead(405).end()
      return
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) })
    const body = createReadStream(file, { highWaterMark: FILE_SERVER_HWM })
    body.once('error', (err) => res.destroy(err))
    body.pipe(res)
  })
  server.listen(0, '127.0.0.1', () => {
    const address = server.address()
    process.stdout.write(`${JSON.stringify({ port: typeof address === 'object' && address !== null ? address.port : 0 })}\n`)
  })
  process.once('SIGTERM', () => process.exit(0))
}

// ---- inner: the benchmark -----------------------------------------------------------------------

interface Proc {
  readonly pid: number
  readonly url: string
  readonly logFile: string
  stop(): Promise<void>
}

const liveChildren = new Set<ChildProcess>()
process.on('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL')
})

function daemonEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('SHOAL_')) env[key] = value
  return env
}

function tail(file: string, lines = 30): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return '(no log)'
  }
}

function track(child: ChildProcess, what: string, logFile: string): { exited: Promise<void>; stop(): Promise<void> } {
  liveChildren.add(child)
  let done = false
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      done = true
      liveChildren.delete(child)
      resolve()
    })
    child.once('error', (err) => {
      process.stderr.write(`${what}: ${err.message}\n`)
      done = true
      liveChildren.delete(child)
      resolve()
    })
  })
  const stop = async (): Promise<void> => {
    if (done) return
    child.kill('SIGTERM')
    const timer = setTimeout(() => {
      process.stderr.write(`${what} did not stop within ${DAEMON_STOP_GRACE_MS} ms; killing it. Log:\n${tail(logFile)}\n`)
      child.kill('SIGKILL')
    }, DAEMON_STOP_GRACE_MS)
    await exited
    clearTimeout(timer)
  }
  return { exited, stop }
}

async function httpStatus(url: string): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const req = request(url, { agent: false, timeout: 2_000 }, (res) => {
      res.resume()
      res.once('end', () => resolve(res.statusCode ?? 0))
    })
    req.once('timeout', () => req.destroy(new Error('timeout')))
    req.once('error', reject)
    req.end()
  })
}

async function httpJson(url: string): Promise<unknown> {
  return await new Promise<unknown>((resolve, reject) => {
    const req = request(url, { agent: false, timeout: 5_000 }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.once('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')))
        } catch (err) {
          reject(err)
        }
      })
    })
    req.once('timeout', () => req.destroy(new Error('timeout')))
    req.once('error', reject)
    req.end()
  })
}

async function startShoal(work: string, dataDir: string, upstreams: string[], opts: Options): Promise<Proc> {
  const port = await freePort('127.0.0.1')
  const logFile = join(work, `shoal-${port}.log`)
  const args = [...opts.daemonNodeArgs, opts.daemonMain, 'daemon', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--log-level', 'warn']
  for (const u of upstreams) args.push('--upstream', u)
  const fd = openSync(logFile, 'a')
  let child: ChildProcess
  try {
    child = spawn(process.execPath, args, { stdio: ['ignore', fd, fd], env: daemonEnv() })
  } finally {
    closeSync(fd)
  }
  const { exited, stop } = track(child, 'shoal', logFile)
  let gone = false
  void exited.then(() => {
    gone = true
  })
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + DAEMON_READY_TIMEOUT_MS
  for (;;) {
    if (gone) throw new Error(`shoal exited while starting:\n${tail(logFile)}`)
    const status = await httpStatus(`${url}/readyz`).catch(() => 0)
    if (status === 200) break
    if (Date.now() > deadline) {
      await stop()
      throw new Error(`shoal did not get ready within ${DAEMON_READY_TIMEOUT_MS} ms:\n${tail(logFile)}`)
    }
    await sleep(20)
  }
  if (child.pid === undefined) throw new Error('shoal has no pid')
  return { pid: child.pid, url, logFile, stop }
}

async function startFileServer(work: string, file: string): Promise<Proc> {
  const logFile = join(work, 'file-server.log')
  const child = spawn(process.execPath, [SELF, '--file-server', file], { stdio: ['ignore', 'pipe', 'inherit'] })
  const { stop } = track(child, 'file server', logFile)
  const port = await new Promise<number>((resolve, reject) => {
    let text = ''
    child.stdout?.on('data', (b: Buffer) => {
      text += b.toString('utf8')
      const nl = text.indexOf('\n')
      if (nl !== -1) resolve((JSON.parse(text.slice(0, nl)) as { port: number }).port)
    })
    child.once('exit', () => reject(new Error('file server exited while starting')))
  })
  if (child.pid === undefined) throw new Error('file server has no pid')
  return { pid: child.pid, url: `http://127.0.0.1:${port}`, logFile, stop }
}

/**
 * What storing costs on this machine, without Shoal: write `size` bytes to a new file in 1 MiB
 * writes, then fsync it. On a VM whose freed memory goes back to the hypervisor, page-cache pages
 * touched for the first time are expensive, and every cold pull pays that.
 */
function calibrateStoreWrite(dir: string, size: number): { seconds: number; cpuPerGb: number; sysPerGb: number; fsyncSeconds: number } {
  const file = join(dir, 'calibrate-write.bin')
  const buf = Buffer.alloc(MiB, 0x5a)
  const fd = openSync(file, 'w')
  try {
    const cpu0 = process.cpuUsage()
    const t0 = process.hrtime.bigint()
    for (let left = size; left > 0; left -= MiB) writeSync(fd, buf, 0, Math.min(MiB, left))
    const t1 = process.hrtime.bigint()
    const cpu = process.cpuUsage(cpu0)
    fsyncSync(fd)
    const t2 = process.hrtime.bigint()
    return {
      seconds: Number(t1 - t0) / 1e9,
      cpuPerGb: (cpu.user + cpu.system) / 1e6 / (size / GB),
      sysPerGb: cpu.system / 1e6 / (size / GB),
      fsyncSeconds: Number(t2 - t1) / 1e9,
    }
  } finally {
    closeSync(fd)
    rmSync(file, { force: true })
  }
}

/** docker-registry's pid, found by its config file on the command line (registry.ts keeps it private) */
function registryPid(registry: OriginRegistry): number {
  const config = join(dirname(registry.logFile), 'config.yml')
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0')
      if (argv.includes(config) && argv.some((a) => a.endsWith('docker-registry'))) return Number(entry)
    } catch {
      // gone meanwhile
    }
  }
  throw new Error(`cannot find the pid of docker-registry serving ${config}`)
}

function blobFile(rootDir: string, digest: string): string {
  const hex = digest.slice(digest.indexOf(':') + 1)
  return join(rootDir, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data')
}

interface Sample {
  seconds: number
  ttfb: number
  /** silence before the last chunk: Shoal's wait for commit (hash check, fsync, rename) on a cold pull */
  lastGap: number
  /** the daemon's CPU seconds by thread name, when asked for */
  threads?: Record<string, { user: number; system: number }>
  /** CPU seconds of the measured processes, keyed by role */
  cpu: Record<string, number>
  originBytes?: number
}

async function measuredPull(
  url: string,
  digest: string,
  size: number,
  processes: Record<string, number | 'self'>,
  threadsOf?: number,
): Promise<Sample> {
  const roles = Object.keys(processes)
  const threadsBefore = threadsOf === undefined ? [] : threadCpuSeconds(threadsOf)
  const { result, cpu } = await cpuDuring(
    roles.map((r) => processes[r]!),
    () => pullBlob(url, { expectDigest: digest, expectSize: size }),
  )
  const sample: Sample = {
    seconds: result.seconds,
    ttfb: result.ttfbSeconds,
    lastGap: result.lastChunkGapSeconds,
    cpu: Object.fromEntries(roles.map((r, i) => [r, cpu[i]!])),
  }
  if (threadsOf !== undefined) sample.threads = threadCpuDelta(threadsBefore, threadCpuSeconds(threadsOf))
  return sample
}

/** median CPU s/GB per thread name, user and system, over samples */
function threadBreakdown(samples: Sample[], gb: number): Record<string, { user: number; system: number }> {
  const names = new Set(samples.flatMap((s) => Object.keys(s.threads ?? {})))
  const out: Record<string, { user: number; system: number }> = {}
  for (const name of names) {
    out[name] = {
      user: round(median(samples.map((s) => (s.threads?.[name]?.user ?? 0) / gb)), 2),
      system: round(median(samples.map((s) => (s.threads?.[name]?.system ?? 0) / gb)), 2),
    }
  }
  return out
}

function formatBreakdown(breakdown: Record<string, { user: number; system: number }>): string {
  return Object.entries(breakdown)
    .filter(([, v]) => v.user + v.system >= 0.01)
    .sort((a, b) => b[1].user + b[1].system - (a[1].user + a[1].system))
    .map(([name, v]) => `${name} ${v.user.toFixed(2)} user + ${v.system.toFixed(2)} sys`)
    .join('; ')
}

function stats(values: number[]): { median: number; min: number; max: number; values: number[] } {
  return { median: round(median(values), 4), min: round(min(values), 4), max: round(max(values), 4), values: values.map((v) => round(v, 4)) }
}

function fmtSeconds(values: number[]): string {
  if (values.length === 1) return values[0]!.toFixed(2)
  return `${median(values).toFixed(2)} [${min(values).toFixed(2)}–${max(values).toFixed(2)}]`
}

const pad = (n: number, digits = 2): string => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a')

async function inner(opts: Options): Promise<boolean> {
  const infoText = process.env[FLEET_ENV]
  if (infoText === undefined) throw new Error('--inner runs inside the fleet built by the outer process')
  const info = JSON.parse(infoText) as FleetInfo
  opts.daemonMain = info.daemonMain
  const work = tmpdir()
  const { size, rounds } = opts
  const gb = size / GB
  const cleanups: (() => Promise<void>)[] = []
  const report: Record<string, unknown> = {
    bench: 'shoal-mirror',
    time: new Date().toISOString(),
    sizeBytes: size,
    rounds,
    linkMbit: info.linkMbit,
    pageCache: 'not dropped: origin and store files are served from the page cache',
    node: process.version,
    daemon: process.env[SNAPSHOT_OF_ENV] ?? opts.daemonMain,
    loadAverageAtStart: loadavg().map((v) => round(v, 2)),
  }
  const checks: { name: string; value: number; floor: number; op: '<=' | '<'; ok: boolean; unit: string }[] = []

  try {
    // -- origin storage, pushed once through a loopback registry, then served by two registries --
    const storage = join(work, 'origin-storage')
    await mkdir(storage, { recursive: true })
    const local = await startOriginRegistry({ bindAddr: '127.0.0.1', rootDir: storage })
    cleanups.push(() => local.close())
    process.stderr.write(`pushing a ${formatBytes(size)} blob…\n`)
    const blob = await pushBlob(local.url, REPO, `shoal-bench-mirror/${size}`, size)
    const digest = blob.digest
    const file = blobFile(storage, digest)
    if (statSync(file).size !== size) throw new Error(`origin blob file ${file} is not ${size} bytes`)
    const localPid = registryPid(local)

    const origin = await startOriginRegistry({
      port: ORIGIN_PORT,
      bindAddr: info.originAddr,
      spawnPrefix: nsPrefix(info.originNs),
      rootDir: storage,
    })
    cleanups.push(() => origin.close())

    const originTx = (): Promise<number> => txBytes(info.originNs)
    const directUrl = `${origin.url}/v2/${REPO}/blobs/${digest}`
    const loopbackUrl = `${local.url}/v2/${REPO}/blobs/${digest}`
    const viaShoal = (shoal: Proc, registry: string): string => `${shoal.url}/v2/${REPO}/blobs/${digest}?ns=${registry}`
    const cappedUpstream = `${CAPPED_REGISTRY}=${origin.url}`
    const loopbackUpstream = `${LOOPBACK_REGISTRY}=${local.url}`
    let storeSeq = 0
    const freshStore = async (): Promise<string> => {
      const dir = join(work, `store-${++storeSeq}`)
      await rm(dir, { recursive: true, force: true })
      await mkdir(dir, { recursive: true })
      return dir
    }
    /** the blob must enter Shoal's store (a daemon may commit it just after the client's last byte) */
    const checkStore = async (shoal: Proc): Promise<void> => {
      const deadline = Date.now() + STORE_COMMIT_TIMEOUT_MS
      for (;;) {
        const status = (await httpJson(`${shoal.url}/api/v1/status`)) as { store?: { bytes?: number } }
        if (status.store?.bytes === size) return
        if (Date.now() > deadline) throw new Error(`Shoal's store holds ${status.store?.bytes} bytes after a cold pull, expected ${size}`)
        await sleep(50)
      }
    }

    // ---- a. origin behind a capped link ------------------------------------------------------
    if (opts.parts.has('a')) {
      const direct: Sample[] = []
      const cold: Sample[] = []
      const warm: Sample[] = []
      for (let r = 0; r < rounds; r++) {
        process.stderr.write(`a. round ${r + 1}/${rounds}\n`)
        const directFirst = r % 2 === 0
        const pullDirect = async (): Promise<void> => {
          const tx0 = await originTx()
          const s = await measuredPull(directUrl, digest, size, { client: 'self' })
          s.originBytes = (await originTx()) - tx0
          direct.push(s)
        }
        if (directFirst) await pullDirect()
        const dir = await freshStore()
        const shoal = await startShoal(work, dir, [cappedUpstream], opts)
        try {
          let tx0 = await originTx()
          const c = await measuredPull(viaShoal(shoal, CAPPED_REGISTRY), digest, size, { shoal: shoal.pid, client: 'self' }, shoal.pid)
          c.originBytes = (await originTx()) - tx0
          cold.push(c)
          await checkStore(shoal)
          tx0 = await originTx()
          const w = await measuredPull(viaShoal(shoal, CAPPED_REGISTRY), digest, size, { shoal: shoal.pid, client: 'self' }, shoal.pid)
          w.originBytes = (await originTx()) - tx0
          warm.push(w)
        } finally {
          await shoal.stop()
          await rm(dir, { recursive: true, force: true })
        }
        if (!directFirst) await pullDirect()
      }
      const t = (xs: Sample[]): number[] => xs.map((s) => s.seconds)
      const coldRatios = cold.map((s, i) => s.seconds / direct[i]!.seconds)
      const warmRatios = warm.map((s, i) => s.seconds / direct[i]!.seconds)
      const originShare = (xs: Sample[]): number => median(xs.map((s) => (s.originBytes ?? 0) / size))
      const cpuPerGb = (xs: Sample[], role: string): number => median(xs.map((s) => (s.cpu[role] ?? 0) / gb))
      const gap = (xs: Sample[]): string => pad(median(xs.map((s) => s.lastGap)), 3)
      printTable(`a. origin (docker-registry) behind a ${info.linkMbit} Mbit/s link (tbf, both ways); Shoal + client on the node's loopback`, [
        ['case', 'seconds, median [min–max]', 'MB/s', 'last-byte wait s', 'origin sent ÷ blob', 'Shoal CPU s/GB', 'client CPU s/GB'],
        ['direct from origin', fmtSeconds(t(direct)), pad(mbps(size, median(t(direct))), 1), gap(direct), pad(originShare(direct), 3), '-', pad(cpuPerGb(direct, 'client'))],
        ['cold via Shoal (fresh store)', fmtSeconds(t(cold)), pad(mbps(size, median(t(cold))), 1), gap(cold), pad(originShare(cold), 3), pad(cpuPerGb(cold, 'shoal')), pad(cpuPerGb(cold, 'client'))],
        ['warm from Shoal\'s store', fmtSeconds(t(warm)), pad(mbps(size, median(t(warm))), 1), gap(warm), pad(originShare(warm), 3), pad(cpuPerGb(warm, 'shoal')), pad(cpuPerGb(warm, 'client'))],
      ])
      process.stdout.write(`Shoal CPU s/GB by thread, cold: ${formatBreakdown(threadBreakdown(cold, gb))}\n`)
      process.stdout.write(`Shoal CPU s/GB by thread, warm: ${formatBreakdown(threadBreakdown(warm, gb))}\n`)
      const coldRatio = median(coldRatios)
      const warmRatio = median(warmRatios)
      checks.push({ name: 'a. cold via Shoal ÷ direct from origin (time)', value: coldRatio, floor: FLOORS.coldVsDirect, op: '<=', ok: coldRatio <= FLOORS.coldVsDirect, unit: '×' })
      checks.push({ name: 'a. warm from Shoal ÷ direct from origin (time)', value: warmRatio, floor: FLOORS.warmVsDirect, op: '<=', ok: warmRatio <= FLOORS.warmVsDirect, unit: '×' })
      report['a'] = {
        directSeconds: stats(t(direct)),
        coldSeconds: stats(t(cold)),
        warmSeconds: stats(t(warm)),
        coldTtfbSeconds: stats(cold.map((s) => s.ttfb)),
        coldLastByteWaitSeconds: stats(cold.map((s) => s.lastGap)),
        coldVsDirect: { medianOfRoundRatios: round(coldRatio, 4), ratioOfMedians: round(ratio(median(t(cold)), median(t(direct))), 4), rounds: coldRatios.map((v) => round(v, 4)) },
        warmVsDirect: { medianOfRoundRatios: round(warmRatio, 4), ratioOfMedians: round(ratio(median(t(warm)), median(t(direct))), 4), rounds: warmRatios.map((v) => round(v, 4)) },
        originSentPerBlob: { direct: round(originShare(direct), 4), cold: round(originShare(cold), 4), warm: round(originShare(warm), 4) },
        shoalCpuSecondsPerGB: { cold: round(cpuPerGb(cold, 'shoal'), 3), warm: round(cpuPerGb(warm, 'shoal'), 3) },
        shoalCpuSecondsPerGBByThread: { cold: threadBreakdown(cold, gb), warm: threadBreakdown(warm, gb) },
        clientCpuSecondsPerGB: { direct: round(cpuPerGb(direct, 'client'), 3), cold: round(cpuPerGb(cold, 'client'), 3), warm: round(cpuPerGb(warm, 'client'), 3) },
      }
    }

    // ---- b. loopback, uncapped ---------------------------------------------------------------
    let warmStore: string | undefined
    if (opts.parts.has('b') || opts.parts.has('c')) {
      const registry: Sample[] = []
      const cold: Sample[] = []
      const warm: Sample[] = []
      const plain: Sample[] = []
      const plainServer = opts.parts.has('b') ? await startFileServer(work, file) : undefined
      if (plainServer !== undefined) cleanups.push(() => plainServer.stop())
      const calibration = opts.parts.has('b') ? calibrateStoreWrite(work, size) : undefined
      const bRounds = opts.parts.has('b') ? rounds : 1
      for (let r = 0; r < bRounds; r++) {
        if (opts.parts.has('b')) process.stderr.write(`b. round ${r + 1}/${rounds}\n`)
        const steps: Record<string, () => Promise<void>> = {
          registry: async () => {
            registry.push(await measuredPull(loopbackUrl, digest, size, { server: localPid, client: 'self' }))
          },
          shoal: async () => {
            if (warmStore !== undefined) await rm(warmStore, { recursive: true, force: true })
            const dir = await freshStore()
            warmStore = dir
            const shoal = await startShoal(work, dir, [loopbackUpstream], opts)
            try {
              cold.push(await measuredPull(viaShoal(shoal, LOOPBACK_REGISTRY), digest, size, { server: shoal.pid, origin: localPid, client: 'self' }, shoal.pid))
              await checkStore(shoal)
              warm.push(await measuredPull(viaShoal(shoal, LOOPBACK_REGISTRY), digest, size, { server: shoal.pid, client: 'self' }, shoal.pid))
            } finally {
              await shoal.stop()
            }
          },
          plain: async () => {
            if (plainServer !== undefined) plain.push(await measuredPull(plainServer.url, digest, size, { server: plainServer.pid, client: 'self' }))
          },
        }
        const order = opts.parts.has('b') ? ['registry', 'shoal', 'plain'] : ['shoal']
        for (let i = 0; i < order.length; i++) await steps[order[(i + r) % order.length]!]!()
      }
      if (opts.parts.has('b')) {
        const t = (xs: Sample[]): number[] => xs.map((s) => s.seconds)
        const cpuPerGb = (xs: Sample[], role: string): number => median(xs.map((s) => (s.cpu[role] ?? Number.NaN) / gb))
        const row = (name: string, xs: Sample[], extra = '-'): string[] => [
          name,
          fmtSeconds(t(xs)),
          pad(mbps(size, median(t(xs))), 0),
          pad(median(xs.map((s) => s.lastGap)), 3),
          pad(cpuPerGb(xs, 'server')),
          extra,
          pad(cpuPerGb(xs, 'client')),
        ]
        printTable('b. loopback, uncapped (the node namespace\'s 127.0.0.1)', [
          ['case', 'seconds, median [min–max]', 'MB/s', 'last-byte wait s', 'server CPU s/GB', 'origin CPU s/GB', 'client CPU s/GB'],
          row('docker-registry serving from its disk', registry),
          row('warm: Shoal serving from its store', warm),
          row('cold: origin → Shoal (verify, store) → client', cold, pad(cpuPerGb(cold, 'origin'))),
          row('plain node:http file server + sha256 client', plain),
        ])
        process.stdout.write(`Shoal CPU s/GB by thread, cold: ${formatBreakdown(threadBreakdown(cold, gb))}\n`)
        process.stdout.write(`Shoal CPU s/GB by thread, warm: ${formatBreakdown(threadBreakdown(warm, gb))}\n`)
        if (calibration !== undefined) {
          process.stdout.write(
            `storing alone on this machine (no Shoal): writing ${formatBytes(size)} to a new file in 1 MiB writes took ${pad(calibration.seconds)} s, ` +
              `${pad(calibration.cpuPerGb)} CPU s/GB (${pad(calibration.sysPerGb)} sys); fsync ${pad(calibration.fsyncSeconds)} s\n`,
          )
        }
        const warmRatios = warm.map((s, i) => s.seconds / registry[i]!.seconds)
        const warmRatio = median(warmRatios)
        checks.push({ name: 'b. warm Shoal ÷ docker-registry, loopback (time)', value: warmRatio, floor: FLOORS.warmVsRegistryLoopback, op: '<=', ok: warmRatio <= FLOORS.warmVsRegistryLoopback, unit: '×' })
        report['b'] = {
          registrySeconds: stats(t(registry)),
          shoalWarmSeconds: stats(t(warm)),
          shoalColdSeconds: stats(t(cold)),
          shoalColdLastByteWaitSeconds: stats(cold.map((s) => s.lastGap)),
          plainHttpSeconds: stats(t(plain)),
          MBps: {
            registry: round(mbps(size, median(t(registry))), 1),
            shoalWarm: round(mbps(size, median(t(warm))), 1),
            shoalCold: round(mbps(size, median(t(cold))), 1),
            plainHttp: round(mbps(size, median(t(plain))), 1),
          },
          serverCpuSecondsPerGB: {
            registry: round(cpuPerGb(registry, 'server'), 3),
            shoalWarm: round(cpuPerGb(warm, 'server'), 3),
            shoalCold: round(cpuPerGb(cold, 'server'), 3),
            plainHttp: round(cpuPerGb(plain, 'server'), 3),
          },
          shoalCpuSecondsPerGBByThread: { cold: threadBreakdown(cold, gb), warm: threadBreakdown(warm, gb) },
          originCpuSecondsPerGBDuringCold: round(cpuPerGb(cold, 'origin'), 3),
          clientCpuSecondsPerGB: {
            registry: round(cpuPerGb(registry, 'client'), 3),
            shoalWarm: round(cpuPerGb(warm, 'client'), 3),
            shoalCold: round(cpuPerGb(cold, 'client'), 3),
            plainHttp: round(cpuPerGb(plain, 'client'), 3),
          },
          warmVsRegistry: { medianOfRoundRatios: round(warmRatio, 4), ratioOfMedians: round(ratio(median(t(warm)), median(t(registry))), 4), rounds: warmRatios.map((v) => round(v, 4)) },
          coldVsPlainHttp: round(ratio(median(t(cold)), median(t(plain))), 4),
          storeWriteCalibration:
            calibration === undefined
              ? undefined
              : {
                  seconds: round(calibration.seconds, 3),
                  cpuSecondsPerGB: round(calibration.cpuPerGb, 3),
                  sysSecondsPerGB: round(calibration.sysPerGb, 3),
                  fsyncSeconds: round(calibration.fsyncSeconds, 3),
                },
        }
      }
    }

    // ---- c. peak RSS with 4 concurrent clients ---------------------------------------------
    if (opts.parts.has('c') && warmStore !== undefined) {
      process.stderr.write('c. peak RSS\n')
      const fanOut = async (shoal: Proc): Promise<{ seconds: number; peak: number; sampled: number; idle: number }> => {
        const idle = peakRssBytes(shoal.pid)
        const sampler = sampleRss(shoal.pid, 25)
        const started = process.hrtime.bigint()
        await Promise.all(
          Array.from({ length: CONCURRENT_CLIENTS }, () =>
            pullBlob(viaShoal(shoal, LOOPBACK_REGISTRY), { expectDigest: digest, expectSize: size }),
          ),
        )
        const seconds = Number(process.hrtime.bigint() - started) / 1e9
        const sampled = sampler.stop()
        return { seconds, peak: peakRssBytes(shoal.pid), sampled, idle }
      }
      let warmRun: Awaited<ReturnType<typeof fanOut>>
      const warmShoal = await startShoal(work, warmStore, [loopbackUpstream], opts)
      try {
        warmRun = await fanOut(warmShoal)
      } finally {
        await warmShoal.stop()
      }
      await rm(warmStore, { recursive: true, force: true })
      const coldDir = await freshStore()
      const coldShoal = await startShoal(work, coldDir, [loopbackUpstream], opts)
      let coldRun: Awaited<ReturnType<typeof fanOut>>
      let originBytes: number
      let originGets: number
      try {
        const mark = local.mark()
        coldRun = await fanOut(coldShoal)
        await local.flush()
        originBytes = local.blobBytesSince(mark, digest)
        originGets = local.requestsSince(mark, (e) => e.method === 'GET' && e.path.includes('/blobs/')).length
        await checkStore(coldShoal)
      } finally {
        await coldShoal.stop()
        await rm(coldDir, { recursive: true, force: true })
      }
      const mb = (n: number): string => (n / MB).toFixed(0)
      printTable(`c. Shoal peak RSS (VmHWM), ${CONCURRENT_CLIENTS} concurrent clients, loopback origin`, [
        ['case', 'peak RSS MB', 'sampled max MB', 'RSS before MB', 'wall s', 'aggregate MB/s', 'origin sent ÷ blob'],
        ['warm (from the store)', mb(warmRun.peak), mb(warmRun.sampled), mb(warmRun.idle), pad(warmRun.seconds), pad(mbps(CONCURRENT_CLIENTS * size, warmRun.seconds), 0), '-'],
        ['cold (single flight)', mb(coldRun.peak), mb(coldRun.sampled), mb(coldRun.idle), pad(coldRun.seconds), pad(mbps(CONCURRENT_CLIENTS * size, coldRun.seconds), 0), `${pad(originBytes / size, 3)} (${originGets} GET)`],
      ])
      checks.push({ name: `c. Shoal peak RSS, ${CONCURRENT_CLIENTS} warm clients (MB)`, value: warmRun.peak / MB, floor: FLOORS.warmPeakRssBytes / MB, op: '<', ok: warmRun.peak < FLOORS.warmPeakRssBytes, unit: ' MB' })
      report['c'] = {
        clients: CONCURRENT_CLIENTS,
        warm: { peakRssBytes: warmRun.peak, sampledMaxRssBytes: warmRun.sampled, rssBeforeBytes: warmRun.idle, seconds: round(warmRun.seconds, 3) },
        cold: {
          peakRssBytes: coldRun.peak,
          sampledMaxRssBytes: coldRun.sampled,
          rssBeforeBytes: coldRun.idle,
          seconds: round(coldRun.seconds, 3),
          originBlobBytes: originBytes,
          originBlobGets: originGets,
        },
      }
    }

    printTable('floors (ratio = median over rounds of the per-round ratio)', [
      ['check', 'value', 'floor', 'result'],
      ...checks.map((c) => [
        c.name,
        c.unit === '×' ? formatRatio(c.value) : `${c.value.toFixed(0)}${c.unit}`,
        `${c.op === '<=' ? '≤' : '<'} ${c.unit === '×' ? formatRatio(c.floor) : `${c.floor}${c.unit}`}`,
        c.ok ? 'ok' : 'MISSED',
      ]),
    ])
    process.stdout.write(
      '\nnote: page cache not dropped — the origin\'s blob file and Shoal\'s store files are read from memory,\n' +
        'so warm figures measure the serving path, not the disk; Shoal\'s cold path does write (and fsync) its file.\n' +
        `every body (${formatBytes(size)}) was hashed while streaming and matched ${digest}.\n`,
    )
    report['loadAverageAtEnd'] = loadavg().map((v) => round(v, 2))
    process.stdout.write(
      `load average (1/5/15 min) at start ${(report['loadAverageAtStart'] as number[]).join(' ')}, at end ${(report['loadAverageAtEnd'] as number[]).join(' ')} (2 cores; other work on the machine skews absolute figures)\n`,
    )
    report['checks'] = checks.map((c) => ({ ...c, value: round(c.value, 4) }))
    report['ok'] = checks.every((c) => c.ok)
    const line = JSON.stringify(report)
    process.stdout.write(`\n${line}\n`)
    if (opts.json !== undefined) writeFileSync(opts.json, `${line}\n`)
    return checks.every((c) => c.ok)
  } finally {
    for (const cleanup of cleanups.reverse()) {
      await cleanup().catch((err: unknown) => process.stderr.write(`cleanup failed: ${(err as Error).message}\n`))
    }
  }
}

// ---- entry ----------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const argv = process.argv.slice(2)
  const { options, inner: isInner, fileServer: serveFile } = parseOptions(argv)
  if (serveFile !== undefined) {
    fileServer(serveFile)
    return
  }
  if (!isInner) {
    await outer(argv, options)
    return
  }
  const ok = await inner(options)
  if (!ok && options.check) process.exitCode = 3
}

main().catch((err: unknown) => {
  process.stderr.write(`bench/mirror: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
