/**
 * The peer data plane against plain node:http, in one run, on loopback.
 *
 *   baseline   node:http server streaming the blob file (page cache) → node:http client + sha256
 *   peer-tls   ChunkProvider on the file → createPeerDataServer (TLS 1.2 PSK) → createPeerDataClient,
 *              chunks fetched `--concurrency` at a time, each hashed (sha256) and checked against
 *              the chunk table, ticket exchange over libp2p included in the timing
 *   peer-plain the same with encryption off (bearer ticket, plaintext HTTP)
 *   daemon     the whole daemon path: a docker-registry on loopback holds a random blob of the same
 *              size; sets of seeding Shoal daemons (1, 2, 4: `--seeders`, each set a swarm of its
 *              own, plus one plaintext seeder) hold it, set up untimed. Each round starts a fresh
 *              daemon (new data dir) bootstrapped to a set, waits until it has joined, and times one
 *              GET of the blob through its /v2 by a client process that hashes the body (peer
 *              transfer, chunk verification, store and serving included). CPU: the seeders, the
 *              puller and the client. Where the bytes came from: the puller's p2p.bytesFromPeer
 *              (per seeder), its shoal_transfer_fetched_bytes_total, and origin's own access log
 *              (any origin byte is reported). `--warmup` untimed pulls per set come first (a lone
 *              seeder hashes its chunk table on the first peer request).
 *
 * Every server and every client runs in its own process; CPU seconds are read from
 * /proc/<pid>/stat of both around the transfer only (process start, libp2p start excluded).
 * Rounds interleave the variants; the table shows medians, and ratios against the baseline of the
 * same run (the machine is noisy: trust ratios, not absolute figures).
 *
 *   scripts/bench/peer-transfer [--size 1GiB] [--rounds 3] [--chunk-size 4MiB] [--concurrency 2]
 *                               [--read-buffer 64KiB] [--seeders 1,2,4] [--warmup 1]
 *                               [--daemon-log-level warn] [--no-daemon | --daemon-only] [--quick] [--json FILE]
 *
 * `--chunk-size` and `--concurrency` apply to the bare data plane rows only, whose server reads
 * each chunk whole into a reused buffer; `--read-buffer` is the node:http baseline's file-stream
 * buffer. The daemons run with their defaults (config/default.yaml).
 *
 * Reuse: `startServer(role, args)` spawns a baseline or peer server process and resolves to what
 * it announced (port, or peer id + addrs); `runClient(args, pids)` runs one measured transfer in
 * a child process. A peer client takes a list of peers and spreads chunks over them round-robin,
 * so 1/2/4 seeders is a matter of starting more peer servers.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { createHash, randomFillSync } from 'node:crypto'
import { closeSync, createReadStream, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { type FileHandle, open } from 'node:fs/promises'
import { createServer, request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { pino } from 'pino'
import { createPeerNode } from '../../src/p2p/node.js'
import { type BlobInfo, type ChunkProvider, chunkCount, chunkLength, createPeerDataClient, createPeerDataServer } from '../../src/peer/index.js'
import type { PeerRef } from '../../src/routing/types.js'
import { blobUrlOf, type OriginBlob, type PullAccounting, pullAccounting, type SeederSet, startDaemon, startOriginWithBlob, startSeeders, waitP2p } from './lib/daemons.js'
import { formatBytes, formatRatio, median, parseSizeArg, printTable, processCpuSeconds, ratio } from './lib/measure.js'

const MiB = 1024 ** 2
const GiB = 1024 ** 3
const GB = 1e9
const SELF = fileURLToPath(import.meta.url)
const READY_TIMEOUT_MS = 30_000
const logger = pino({ level: process.env['SHOAL_BENCH_LOG'] ?? 'silent' }, pino.destination(2))

// ---------------------------------------------------------------- shared shapes

/** what the parent writes for the children: the blob file and its chunk table */
export interface BlobFixture {
  file: string
  digest: string
  size: number
  chunkSize: number
  table: string[]
  readBuffer: number
}

export type ServerAnnouncement = { role: 'baseline-server'; port: number } | { role: 'peer-server'; peer: PeerRef; dataPort: number }

export interface ClientResult {
  bytes: number
  seconds: number
}

export interface Measured extends ClientResult {
  /** CPU seconds during the transfer, per process (server(s) first, client last) */
  cpu: number[]
}

// ---------------------------------------------------------------- parent side

export interface SpawnedServer {
  child: ChildProcess
  announced: ServerAnnouncement
  stop(): Promise<void>
}

function nodeChild(args: string[]): ChildProcess {
  return spawn(process.execPath, [SELF, ...args], { stdio: ['pipe', 'pipe', 'inherit'] })
}

function firstLine(child: ChildProcess, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! })
    const timer = setTimeout(() => reject(new Error(`${what}: no output within ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS)
    const onExit = (code: number | null): void => reject(new Error(`${what} exited (${code}) before it was ready`))
    child.once('exit', onExit)
    lines.once('line', (line) => {
      clearTimeout(timer)
      child.off('exit', onExit)
      lines.close()
      resolve(line)
    })
  })
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000)
  await exited
  clearTimeout(timer)
}

/** spawn a server process: `baseline-server` or `peer-server` (extra: --encrypt true|false) */
export async function startServer(role: 'baseline-server' | 'peer-server', fixtureFile: string, extra: string[] = []): Promise<SpawnedServer> {
  const child = nodeChild(['--role', role, '--fixture', fixtureFile, ...extra])
  const announced = JSON.parse(await firstLine(child, role)) as ServerAnnouncement
  return { child, announced, stop: () => stopChild(child) }
}

/**
 * One measured transfer: spawn a client process, let it get ready (libp2p started), then read the
 * CPU time of the servers and the client around the transfer.
 */
export async function runClient(args: string[], serverPids: number[]): Promise<Measured> {
  const child = nodeChild(args)
  const lines = createInterface({ input: child.stdout! })
  const iterator = lines[Symbol.asyncIterator]()
  const next = async (what: string): Promise<string> => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10 * 60_000)
    const { value, done } = await iterator.next()
    clearTimeout(timer)
    if (done === true) throw new Error(`client exited (${child.exitCode}) before ${what}`)
    return value
  }
  try {
    await next('ready')
    const pids = [...serverPids, child.pid!]
    const before = pids.map(processCpuSeconds)
    child.stdin!.write('go\n')
    const result = JSON.parse(await next('its result')) as ClientResult & { error?: string }
    const cpu = pids.map((pid, i) => processCpuSeconds(pid) - before[i]!)
    if (result.error !== undefined) throw new Error(`client failed: ${result.error}`)
    return { ...result, cpu }
  } finally {
    lines.close()
    await stopChild(child)
  }
}

/** a random blob file and its chunk table */
export function writeFixture(dir: string, size: number, chunkSize: number, readBuffer: number): { fixtureFile: string; fixture: BlobFixture } {
  const file = join(dir, 'blob.bin')
  const fd = openSync(file, 'w')
  const whole = createHash('sha256')
  const table: string[] = []
  const block = Buffer.allocUnsafe(chunkSize)
  try {
    for (let offset = 0; offset < size; offset += chunkSize) {
      const piece = block.subarray(0, Math.min(chunkSize, size - offset))
      randomFillSync(piece)
      writeSync(fd, piece)
      whole.update(piece)
      table.push(createHash('sha256').update(piece).digest('hex'))
    }
  } finally {
    closeSync(fd)
  }
  const fixture: BlobFixture = { file, digest: `sha256:${whole.digest('hex')}`, size, chunkSize, table, readBuffer }
  const fixtureFile = join(dir, 'fixture.json')
  writeFileSync(fixtureFile, JSON.stringify(fixture))
  return { fixtureFile, fixture }
}

// ---------------------------------------------------------------- child roles

function readFixture(file: string): BlobFixture {
  return JSON.parse(readFileSync(file, 'utf8')) as BlobFixture
}

function announce(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`)
}

/** resolves on the parent's "go" line */
function waitForGo(): Promise<void> {
  return new Promise((resolve) => {
    const lines = createInterface({ input: process.stdin })
    lines.once('line', () => {
      lines.close()
      resolve()
    })
  })
}

function untilSignalled(): Promise<void> {
  return new Promise((resolve) => {
    process.once('SIGTERM', resolve)
    process.once('SIGINT', resolve)
  })
}

async function baselineServer(fixture: BlobFixture): Promise<void> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': fixture.size })
    createReadStream(fixture.file, { highWaterMark: fixture.readBuffer }).pipe(res)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  announce({ role: 'baseline-server', port: typeof address === 'object' && address !== null ? address.port : 0 })
  await untilSignalled()
  server.closeAllConnections()
  server.close()
}

/** the baseline: GET the blob from the node:http server, hashing the body */
function baselineClient(fixture: BlobFixture, port: number): Promise<ClientResult> {
  return httpClient(`http://127.0.0.1:${port}/`, fixture.digest)
}

/** GET a URL (a daemon's /v2 blob), hashing the body; it must hash to `digest` */
async function httpClient(url: string, digest: string): Promise<ClientResult> {
  announce({ ready: true })
  await waitForGo()
  const started = performance.now()
  const bytes = await new Promise<number>((resolve, reject) => {
    const req = request(url, { agent: false }, (res) => {
      if (res.statusCode !== 200) {
        res.resume()
        reject(new Error(`GET ${url}: HTTP ${res.statusCode}`))
        return
      }
      const hash = createHash('sha256')
      let n = 0
      res.on('data', (chunk: Buffer) => {
        hash.update(chunk)
        n += chunk.length
      })
      res.once('error', reject)
      res.once('aborted', () => reject(new Error(`GET ${url}: body cut after ${n} bytes`)))
      res.once('end', () => {
        const got = `sha256:${hash.digest('hex')}`
        if (!res.complete) reject(new Error(`GET ${url}: body cut after ${n} bytes`))
        else if (got !== digest) reject(new Error(`GET ${url}: body of ${n} bytes hashes to ${got}, expected ${digest}`))
        else resolve(n)
      })
    })
    req.once('error', reject)
    req.end()
  })
  return { bytes, seconds: (performance.now() - started) / 1000 }
}

/** a ChunkProvider over one file whose every chunk is held */
export function fileProvider(fixture: BlobFixture): ChunkProvider {
  const info: BlobInfo = { size: fixture.size, chunkSize: fixture.chunkSize, table: fixture.table, have: fixture.table.map(() => true) }
  let file: Promise<FileHandle> | undefined // (open for the process's life: the bench's server runs until it is killed)
  const free: Buffer[] = []
  return {
    info: async (digest) => (digest === fixture.digest ? info : undefined),
    layout: (digest) => (digest === fixture.digest ? info : undefined),
    read: async (digest, index, signal) => {
      if (digest !== fixture.digest || index >= chunkCount(fixture.size, fixture.chunkSize)) return undefined
      // buffers reused as the daemon's provider does (a fresh one per chunk faults its pages in)
      const length = chunkLength(fixture, index)
      const buffer = free.pop() ?? Buffer.allocUnsafeSlow(fixture.chunkSize)
      const release = (): void => void free.push(buffer)
      try {
        file ??= open(fixture.file, 'r')
        await (await file).read(buffer, 0, length, index * fixture.chunkSize)
        signal.throwIfAborted()
      } catch (err) {
        release()
        throw err
      }
      return { bytes: buffer.subarray(0, length), release }
    }
  }
}

async function peerServer(fixture: BlobFixture, encrypt: boolean, dir: string): Promise<void> {
  const node = await createPeerNode({ dataDir: dir, listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], logger })
  const server = await createPeerDataServer({
    libp2p: node.libp2p,
    provider: fileProvider(fixture),
    encrypt,
    listen: { host: '127.0.0.1', port: 0 },
    maxUploads: 64,
    logger
  })
  const addrs = node.status().listenAddrs.map((a) => a.replace(/\/p2p\/[^/]+$/, ''))
  announce({ role: 'peer-server', peer: { id: node.peerId, addrs }, dataPort: server.port })
  await untilSignalled()
  await server.close()
  await node.stop()
}

async function peerClient(fixture: BlobFixture, peers: PeerRef[], encrypt: boolean, concurrency: number, dir: string): Promise<ClientResult> {
  const node = await createPeerNode({ dataDir: dir, listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], logger })
  const client = createPeerDataClient({ libp2p: node.libp2p, encrypt, logger, timeoutMs: 30_000 })
  announce({ ready: true })
  await waitForGo()
  const started = performance.now()
  const signal = AbortSignal.timeout(10 * 60_000)
  const info = await client.info(peers[0]!, fixture.digest, { signal })
  if (info?.table === undefined) throw new Error('the seeder has no table for the blob')
  const table = info.table
  const count = chunkCount(info.size, info.chunkSize)
  let next = 0
  let bytes = 0
  const worker = async (): Promise<void> => {
    // one receive buffer per worker, reused (as the daemon's scheduler reuses its chunk buffers)
    const buffer = Buffer.allocUnsafeSlow(info.chunkSize)
    for (let index = next++; index < count; index = next++) {
      const peer = peers[index % peers.length]!
      const into = buffer.subarray(0, chunkLength(info, index))
      await client.fetchChunk(peer, fixture.digest, index, { signal, into })
      if (createHash('sha256').update(into).digest('hex') !== table[index]) throw new Error(`chunk ${index} failed verification`)
      bytes += into.length
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker))
  const seconds = (performance.now() - started) / 1000
  await client.close()
  await node.stop()
  return { bytes, seconds }
}

// ---------------------------------------------------------------- main

interface Variant {
  name: string
  /** index into the started servers */
  server: number
  clientArgs: (fixtureFile: string, announced: ServerAnnouncement, dir: string) => string[]
}

interface Row {
  name: string
  mbps: number
  serverCpuPerGB: number
  clientCpuPerGB: number
  cpuPerGB: number
}

/** a pull through a fresh daemon's /v2 from one set of seeding daemons */
interface DaemonVariant {
  name: string
  encrypt: boolean
  set: SeederSet
}

export interface DaemonSample extends Measured {
  /** CPU seconds: `cpu` holds the seeders (in set order), then the puller, then the client */
  accounting: Omit<PullAccounting, 'warnings'> & { warnings: string[] }
}

interface DaemonRow {
  name: string
  seeders: number
  encrypt: boolean
  mbps: number
  seederCpuPerGB: number
  pullerCpuPerGB: number
  clientCpuPerGB: number
  cpuPerGB: number
  throughputVsBaseline: number
  cpuVsBaseline: number
  /** medians over rounds, bytes the puller took from each seeder (set order) */
  bytesFromSeeder: number[]
  /** the most origin served the puller in any round (blob bytes, from origin's log) */
  maxOriginBytes: number
}

/** One timed pull: a fresh daemon (new data dir) bootstrapped to the set, its /v2 read by a client process. */
async function daemonRound(blob: OriginBlob, variant: DaemonVariant, logLevel: string): Promise<DaemonSample> {
  const { set } = variant
  const puller = await startDaemon(blob, { encrypt: variant.encrypt, bootstrap: set.nodes.map((n) => n.p2pAddr), logLevel })
  try {
    await waitP2p(puller, 'the pulling daemon to join', (s) => s.joined && s.routingTableSize >= set.nodes.length)
    await blob.origin.flush()
    const mark = blob.origin.mark()
    const measured = await runClient(['--role', 'http-client', '--url', blobUrlOf(puller, blob), '--digest', blob.digest], [...set.nodes.map((n) => n.pid), puller.pid])
    const accounting = await pullAccounting(puller, set, blob, mark)
    return { ...measured, accounting: { ...accounting, warnings: accounting.warnings.map((l) => JSON.stringify(l)) } }
  } finally {
    await puller.close()
  }
}

function describeDaemonSample(m: DaemonSample, seeders: number): string {
  const a = m.accounting
  const seederCpu = m.cpu.slice(0, seeders).reduce((x, y) => x + y, 0)
  return (
    `${(m.bytes / 1e6 / m.seconds).toFixed(0)} MB/s, CPU s seeders ${seederCpu.toFixed(2)} puller ${m.cpu[seeders]!.toFixed(2)} client ${m.cpu[seeders + 1]!.toFixed(2)}; ` +
    `MB from seeders ${a.fromSeeder.map((b) => (b / 1e6).toFixed(0)).join('/')}` +
    (a.fromOthers > 0 ? ` (+${(a.fromOthers / 1e6).toFixed(0)} from others)` : '') +
    `, from origin ${a.originBytes} B (${a.originRequests} requests, metrics origin ${a.fetchedOrigin} B / peer ${a.fetchedPeer} B)` +
    (a.originBytes > 0 ? ` [origin log: ${a.originLog.join('; ')}]` : '') +
    (a.warnings.length > 0 ? `, ${a.warnings.length} warning(s) in the puller's log` : '')
  )
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string' },
      rounds: { type: 'string' },
      'chunk-size': { type: 'string', default: '4MiB' },
      concurrency: { type: 'string', default: '2' },
      'read-buffer': { type: 'string', default: '64KiB' },
      seeders: { type: 'string', default: '1,2,4' },
      warmup: { type: 'string', default: '1' },
      'daemon-log-level': { type: 'string', default: 'warn' },
      'no-daemon': { type: 'boolean', default: false },
      'daemon-only': { type: 'boolean', default: false },
      quick: { type: 'boolean', default: false },
      json: { type: 'string' }
    }
  })
  const quick = values.quick === true
  const size = values.size !== undefined ? parseSizeArg(values.size) : quick ? 256 * MiB : GiB
  const rounds = Number(values.rounds ?? (quick ? 1 : 3))
  const chunkSize = parseSizeArg(values['chunk-size']!)
  const readBuffer = parseSizeArg(values['read-buffer']!)
  const concurrency = Number(values.concurrency)
  const warmup = Number(values.warmup)
  const daemonLogLevel = values['daemon-log-level']!
  const withDaemons = values['no-daemon'] !== true
  const daemonOnly = values['daemon-only'] === true
  if (daemonOnly && !withDaemons) throw new Error('--daemon-only and --no-daemon exclude each other')
  const seederCounts = [...new Set([1, ...values.seeders!.split(',').filter((x) => x.trim() !== '').map(Number)])].sort((a, b) => a - b)
  if (!Number.isInteger(rounds) || rounds < 1 || !Number.isInteger(concurrency) || concurrency < 1) throw new Error('bad --rounds or --concurrency')
  if (!Number.isInteger(warmup) || warmup < 0) throw new Error('bad --warmup')
  if (!seederCounts.every((n) => Number.isInteger(n) && n >= 1 && n <= 16)) throw new Error('bad --seeders (e.g. 1,2,4)')

  const dir = mkdtempSync(join(tmpdir(), 'shoal-bench-peer-'))
  const servers: SpawnedServer[] = []
  const sets: SeederSet[] = []
  let blob: OriginBlob | undefined
  try {
    process.stderr.write(`writing a ${formatBytes(size)} blob (chunks of ${formatBytes(chunkSize)})…\n`)
    const { fixtureFile } = writeFixture(dir, size, chunkSize, readBuffer)
    // page cache: read it once
    await new Promise<void>((resolve, reject) => createReadStream(join(dir, 'blob.bin')).on('data', () => {}).once('end', resolve).once('error', reject))

    servers.push(await startServer('baseline-server', fixtureFile))
    servers.push(await startServer('peer-server', fixtureFile, ['--encrypt', 'true', '--dir', join(dir, 'seed-tls')]))
    servers.push(await startServer('peer-server', fixtureFile, ['--encrypt', 'false', '--dir', join(dir, 'seed-plain')]))

    let clients = 0
    const peerArgs = (encrypt: boolean) => (fixture: string, announced: ServerAnnouncement, d: string) => {
      if (announced.role !== 'peer-server') throw new Error('not a peer server')
      return ['--role', 'peer-client', '--fixture', fixture, '--peers', JSON.stringify([announced.peer]), '--encrypt', String(encrypt), '--concurrency', String(concurrency), '--dir', join(d, `client-${clients++}`)]
    }
    const variants: Variant[] = [
      {
        name: 'node:http + sha256 (baseline)',
        server: 0,
        clientArgs: (fixture, announced) => ['--role', 'baseline-client', '--fixture', fixture, '--port', String(announced.role === 'baseline-server' ? announced.port : 0)]
      },
      { name: 'peer data plane, TLS-PSK AES128-GCM', server: 1, clientArgs: peerArgs(true) },
      { name: 'peer data plane, plaintext (encryption off)', server: 2, clientArgs: peerArgs(false) }
    ]
    // --daemon-only: the baseline (every ratio needs it) and the daemon rows
    if (daemonOnly) variants.splice(1)

    // the daemon path: origin with the blob, then seeding daemons that hold it (untimed)
    const daemonVariants: DaemonVariant[] = []
    if (withDaemons) {
      process.stderr.write(`pushing a ${formatBytes(size)} blob to a loopback docker-registry…\n`)
      blob = await startOriginWithBlob(size, `peer-transfer ${process.pid} ${Date.now()}`)
      const origin = blob
      const build = async (name: string, count: number, encrypt: boolean): Promise<SeederSet> => {
        process.stderr.write(`starting ${name}: ${count} seeding daemon(s), encryption ${encrypt ? 'on' : 'off'}…\n`)
        const set = await startSeeders(origin, { name, count, encrypt, dataDir: (i) => join(dir, `${name}-${i}`), logLevel: daemonLogLevel })
        sets.push(set)
        if (set.originBytes > size) process.stderr.write(`WARNING: building ${name}, origin served ${set.originBytes} blob bytes (expected ${size}: only the first seeder's fetch)\n`)
        return set
      }
      for (const count of seederCounts) {
        const set = await build(`tls-${count}`, count, true)
        daemonVariants.push({ name: `daemon /v2, TLS, ${count} seeder${count > 1 ? 's' : ''}`, encrypt: true, set })
        if (count === 1) {
          const plain = await build('plain-1', 1, false)
          daemonVariants.push({ name: 'daemon /v2, plaintext, 1 seeder', encrypt: false, set: plain })
        }
      }
      for (const variant of daemonVariants) {
        for (let i = 1; i <= warmup; i++) {
          const m = await daemonRound(origin, variant, daemonLogLevel)
          process.stderr.write(`warm-up ${i}/${warmup} ${variant.name}: ${describeDaemonSample(m, variant.set.nodes.length)}\n`)
        }
      }
    }

    const samples = variants.map(() => [] as Measured[])
    const daemonSamples = daemonVariants.map(() => [] as DaemonSample[])
    for (let round = 1; round <= rounds; round++) {
      for (const [i, variant] of variants.entries()) {
        const server = servers[variant.server]!
        const measured = await runClient(variant.clientArgs(fixtureFile, server.announced, dir), [server.child.pid!])
        if (measured.bytes !== size) throw new Error(`${variant.name}: ${measured.bytes} bytes, expected ${size}`)
        samples[i]!.push(measured)
        process.stderr.write(
          `round ${round}/${rounds} ${variant.name}: ${(measured.bytes / 1e6 / measured.seconds).toFixed(0)} MB/s, CPU s server ${measured.cpu[0]!.toFixed(2)} client ${measured.cpu[1]!.toFixed(2)}\n`
        )
      }
      for (const [i, variant] of daemonVariants.entries()) {
        const measured = await daemonRound(blob!, variant, daemonLogLevel)
        if (measured.bytes !== size) throw new Error(`${variant.name}: ${measured.bytes} bytes, expected ${size}`)
        daemonSamples[i]!.push(measured)
        process.stderr.write(`round ${round}/${rounds} ${variant.name}: ${describeDaemonSample(measured, variant.set.nodes.length)}\n`)
      }
    }

    const perGB = (m: Measured, seconds: number): number => (seconds * GB) / m.bytes
    const rows: Row[] = variants.map((variant, i) => {
      const s = samples[i]!
      return {
        name: variant.name,
        mbps: median(s.map((m) => m.bytes / 1e6 / m.seconds)),
        serverCpuPerGB: median(s.map((m) => perGB(m, m.cpu[0]!))),
        clientCpuPerGB: median(s.map((m) => perGB(m, m.cpu[1]!))),
        cpuPerGB: median(s.map((m) => perGB(m, m.cpu[0]! + m.cpu[1]!)))
      }
    })
    const base = rows[0]!
    const daemonRows: DaemonRow[] = daemonVariants.map((variant, i) => {
      const s = daemonSamples[i]!
      const n = variant.set.nodes.length
      const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0)
      const mbps = median(s.map((m) => m.bytes / 1e6 / m.seconds))
      const cpuPerGB = median(s.map((m) => perGB(m, sum(m.cpu))))
      return {
        name: variant.name,
        seeders: n,
        encrypt: variant.encrypt,
        mbps,
        seederCpuPerGB: median(s.map((m) => perGB(m, sum(m.cpu.slice(0, n))))),
        pullerCpuPerGB: median(s.map((m) => perGB(m, m.cpu[n]!))),
        clientCpuPerGB: median(s.map((m) => perGB(m, m.cpu[n + 1]!))),
        cpuPerGB,
        throughputVsBaseline: ratio(mbps, base.mbps),
        cpuVsBaseline: ratio(cpuPerGB, base.cpuPerGB),
        bytesFromSeeder: variant.set.nodes.map((_, k) => median(s.map((m) => m.accounting.fromSeeder[k]!))),
        maxOriginBytes: Math.max(...s.map((m) => m.accounting.originBytes))
      }
    })

    printTable(
      `peer data plane vs node:http, ${formatBytes(size)} on loopback, medians of ${rounds} round(s); chunks ${formatBytes(chunkSize)}, ${concurrency} in flight, read buffer ${formatBytes(readBuffer)}`,
      [
        ['variant', 'MB/s', 'CPU s/GB server', 'CPU s/GB client', 'CPU s/GB total', 'throughput vs baseline', 'CPU vs baseline'],
        ...rows.map((r) => [
          r.name,
          r.mbps.toFixed(0),
          r.serverCpuPerGB.toFixed(2),
          r.clientCpuPerGB.toFixed(2),
          r.cpuPerGB.toFixed(2),
          formatRatio(ratio(r.mbps, base.mbps)),
          formatRatio(ratio(r.cpuPerGB, base.cpuPerGB))
        ])
      ]
    )
    if (daemonRows.length > 0) {
      printTable(
        `daemon path: a fresh daemon (new data dir each round) pulls the blob from seeding daemons and serves it on /v2 to a hashing client; ` +
          `CPU = seeders + puller + client; medians of ${rounds} round(s), ratios against the baseline above`,
        [
          ['variant', 'MB/s', 'CPU s/GB seeders', 'CPU s/GB puller', 'CPU s/GB client', 'CPU s/GB total', 'throughput vs baseline', 'CPU vs baseline', 'MB from each seeder', 'origin bytes'],
          ...daemonRows.map((r) => [
            r.name,
            r.mbps.toFixed(0),
            r.seederCpuPerGB.toFixed(2),
            r.pullerCpuPerGB.toFixed(2),
            r.clientCpuPerGB.toFixed(2),
            r.cpuPerGB.toFixed(2),
            formatRatio(r.throughputVsBaseline),
            formatRatio(r.cpuVsBaseline),
            r.bytesFromSeeder.map((b) => (b / 1e6).toFixed(0)).join(' / '),
            String(r.maxOriginBytes)
          ])
        ]
      )
    }

    const tls = rows[1]
    const pass = tls === undefined ? undefined : ratio(tls.mbps, base.mbps) >= 0.5 && ratio(tls.cpuPerGB, base.cpuPerGB) <= 2
    if (pass !== undefined) process.stdout.write(`\ntarget, data plane (encrypted: ≥ 0.50× throughput, ≤ 2.00× CPU): ${pass ? 'met' : 'NOT met'}\n`)
    const daemonTls = daemonRows.find((r) => r.encrypt && r.seeders === 1)
    let daemonPass: boolean | undefined
    if (daemonTls !== undefined) {
      daemonPass = daemonTls.throughputVsBaseline >= 0.5 && daemonTls.cpuVsBaseline <= 2
      process.stdout.write(
        `target, daemon path (1 seeder, encrypted: ≥ 0.50× throughput, ≤ 2.00× CPU): ${daemonPass ? 'met' : 'NOT met'} ` +
          `(${formatRatio(daemonTls.throughputVsBaseline)} throughput, ${formatRatio(daemonTls.cpuVsBaseline)} CPU)\n`
      )
    }
    for (const [i, variant] of daemonVariants.entries()) {
      const s = daemonSamples[i]!
      const fromOrigin = s.filter((m) => m.accounting.originBytes > 0 || m.accounting.fetchedOrigin > 0).length
      if (fromOrigin > 0) {
        const log = s.flatMap((m) => m.accounting.originLog)
        process.stdout.write(`WARNING: ${variant.name}: origin served blob bytes during ${fromOrigin} of ${s.length} round(s): ${log.slice(0, 6).join('; ')}\n`)
      }
      const warned = s.reduce((a, m) => a + m.accounting.warnings.length, 0)
      if (warned > 0) process.stdout.write(`note: ${variant.name}: ${warned} warn-level log line(s) from the puller, e.g. ${s.flatMap((m) => m.accounting.warnings)[0]}\n`)
    }
    const json = JSON.stringify({
      bench: 'peer-transfer',
      size,
      rounds,
      chunkSize,
      concurrency,
      readBuffer,
      rows,
      samples: variants.map((v, i) => ({ name: v.name, samples: samples[i] })),
      daemon: {
        targetMet: daemonPass,
        rows: daemonRows,
        setup: sets.map((set) => ({ name: set.name, encrypt: set.encrypt, seeders: set.nodes.map((n) => n.peerId), originBytes: set.originBytes })),
        samples: daemonVariants.map((v, i) => ({ name: v.name, samples: daemonSamples[i] }))
      }
    })
    process.stdout.write(`${json}\n`)
    if (values.json !== undefined) writeFileSync(values.json, `${json}\n`)
  } finally {
    await Promise.allSettled(sets.map((s) => s.close()))
    await blob?.origin.close()
    await Promise.all(servers.map((s) => s.stop()))
    rmSync(dir, { recursive: true, force: true })
  }
}

async function child(): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string' },
      fixture: { type: 'string' },
      port: { type: 'string' },
      peers: { type: 'string' },
      encrypt: { type: 'string', default: 'true' },
      concurrency: { type: 'string', default: '2' },
      dir: { type: 'string' },
      url: { type: 'string' },
      digest: { type: 'string' }
    }
  })
  if (values.role === 'http-client') {
    let result: ClientResult
    try {
      result = await httpClient(values.url!, values.digest!)
    } catch (err) {
      announce({ error: String((err as Error)?.stack ?? err) })
      process.exit(1)
    }
    announce(result)
    process.exit(0)
  }
  const fixture = readFixture(values.fixture!)
  const encrypt = values.encrypt !== 'false'
  switch (values.role) {
    case 'baseline-server':
      return baselineServer(fixture)
    case 'peer-server':
      return peerServer(fixture, encrypt, values.dir!)
    case 'baseline-client':
    case 'peer-client': {
      let result: ClientResult
      try {
        result =
          values.role === 'baseline-client'
            ? await baselineClient(fixture, Number(values.port))
            : await peerClient(fixture, JSON.parse(values.peers!) as PeerRef[], encrypt, Number(values.concurrency), values.dir!)
      } catch (err) {
        announce({ error: String((err as Error)?.stack ?? err) })
        process.exit(1)
      }
      announce(result)
      process.exit(0) // do not wait for kept-alive handles
      return
    }
    default:
      throw new Error(`unknown role ${values.role}`)
  }
}

const isChild = process.argv.includes('--role')
;(isChild ? child() : main()).catch((err: unknown) => {
  process.stderr.write(`${(err as Error)?.stack ?? String(err)}\n`)
  process.exit(1)
})
