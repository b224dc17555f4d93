/**
 * A real origin registry for integration tests, e2e tests and benchmarks:
 * distribution 2.8.2 (`docker-registry`, Debian package) in a temp dir, on loopback.
 *
 * Request accounting comes from the registry's own access log. distribution writes two logs:
 * - stderr: logrus lines (JSON with `log.formatter: json`) with "http.request.method",
 *   "http.request.uri", "http.response.status", "http.response.written" — but only for requests
 *   that reach its dispatcher AND either succeed (2xx/3xx) or carry a registry error. A 416 to a
 *   bad Range and a 404 for an unknown route get no JSON line at all.
 * - stdout: one Apache "combined" access-log line per response (gorilla CombinedLoggingHandler,
 *   wrapping everything), `127.0.0.1 - - [date] "GET /uri HTTP/1.1" 206 1000 "" "ua"`. It holds the
 *   same method, URI, status and written bytes, and is complete, so entries are parsed from it.
 * Both land in one log file (O_APPEND, each line one write) that is parsed incrementally.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, openSync, readFileSync, readSync, rmSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort } from './proc.js'

export { freePort }

export interface OriginLogEntry {
  method: string
  /** request URI exactly as logged: path plus query string, if any */
  path: string
  status: number
  /** response body bytes the registry wrote (0 for a HEAD 200; HEAD errors count their unsent body) */
  bytes: number
}

export interface OriginRegistry {
  /** http://HOST:PORT */
  url: string
  /** HOST:PORT */
  host: string
  port: number
  /** storage root dir */
  rootDir: string
  /** the log file (stdout + stderr of every run) */
  logFile: string
  /** stop the process (SIGTERM, then SIGKILL after 3 s); idempotent */
  stop(): Promise<void>
  /** (re)start on the same port and storage; resolves when GET /v2/ answers */
  start(): Promise<void>
  /** every request logged so far (all runs), in order; the harness's own probes are left out */
  log(): OriginLogEntry[]
  /** an index into log() to diff from */
  mark(): number
  /** sum of bytes of 2xx GET .../blobs/<digest> responses since mark (optionally only that digest) */
  blobBytesSince(mark: number, digest?: string): number
  requestsSince(mark: number, filter?: (e: OriginLogEntry) => boolean): OriginLogEntry[]
  /**
   * Waits until every response that completed before this call is in log().
   * distribution writes its access-log line just after the last body byte, so a client that has
   * just read a whole response can still race the log line: call this before asserting counts.
   */
  flush(): Promise<void>
  /** the raw log text (both streams) of all runs, for failure messages */
  rawLog(): string
  /** stop + rm -rf the temp dir (and the storage, unless rootDir was given) */
  close(): Promise<void>
}

export interface StartOriginOptions {
  /** default: a free port */
  port?: number
  /** default 127.0.0.1 */
  bindAddr?: string
  tokenAuth?: { realm: string; service: string; issuer: string; rootCertBundle: string }
  /** prepended to the command line, e.g. ['ip', 'netns', 'exec', 'ns1'] */
  spawnPrefix?: string[]
  /** storage root; default a dir inside the temp dir. A given rootDir is not removed by close(). */
  rootDir?: string
  /** default docker-registry (or $SHOAL_TEST_REGISTRY_BIN) */
  binary?: string
}

const STOP_GRACE_MS = 3_000
const START_TIMEOUT_MS = 15_000
const FLUSH_TIMEOUT_MS = 5_000
const POLL_INTERVAL_MS = 10
/** query parameter marking the harness's own probes, which log() leaves out */
const PROBE_PARAM = '__shoal_harness'
// host ident user [time] "METHOD URI PROTO" status size ...
const ACCESS_LINE_RE = /^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)/
const LISTENING_RE = /"msg":"listening on /
const BLOB_PATH_RE = /^\/v2\/.+\/blobs\/([^/?]+)(?:\?.*)?$/

// Children are killed (and their temp dirs removed) when the test process exits, whatever the
// test did.
const children = new Set<ChildProcess>()
const tempDirs = new Set<string>()
let exitHookInstalled = false

function killAllChildren(): void {
  for (const child of children) killTree(child, 'SIGKILL')
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true })
    } catch {
      // best effort at exit
    }
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.on('exit', killAllChildren)
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    const onSignal = (): void => {
      killAllChildren()
      // keep the default behaviour (exit) when nobody else handles the signal
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
    }
    process.once(signal, onSignal)
  }
}

/** the child runs in its own process group, so a wrapper (ip netns exec, sudo) dies with it */
function killTree(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
  try {
    process.kill(-child.pid, signal)
  } catch {
    try {
      child.kill(signal)
    } catch {
      // already gone
    }
  }
}

function registryConfig(rootDir: string, addr: string, opts: StartOriginOptions): string {
  const config: Record<string, unknown> = {
    version: '0.1',
    log: { level: 'info', formatter: 'json', accesslog: { disabled: false } },
    storage: {
      filesystem: { rootdirectory: rootDir },
      delete: { enabled: true },
      maintenance: { uploadpurging: { enabled: false } },
    },
    http: { addr, secret: randomBytes(16).toString('hex') },
  }
  if (opts.tokenAuth !== undefined) {
    config['auth'] = {
      token: {
        realm: opts.tokenAuth.realm,
        service: opts.tokenAuth.service,
        issuer: opts.tokenAuth.issuer,
        rootcertbundle: opts.tokenAuth.rootCertBundle,
      },
    }
  }
  // JSON is YAML: no quoting pitfalls for paths and URLs
  return JSON.stringify(config, null, 2) + '\n'
}

/** the registry's environment, without REGISTRY_* overrides of our config */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('REGISTRY_')) env[key] = value
  }
  return env
}

/** GET url; resolves with the status, or rejects on a connection error / timeout */
async function probe(url: string, timeoutMs: number): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const req = request(url, { method: 'GET', agent: false, timeout: timeoutMs }, (res) => {
      res.resume()
      res.once('end', () => resolve(res.statusCode ?? 0))
      res.once('error', reject)
    })
    req.once('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)))
    req.once('error', reject)
    req.end()
  })
}

class LogReader {
  readonly entries: OriginLogEntry[] = []
  private fd: number | null = null
  private offset = 0
  private pending = ''
  private readonly buf = Buffer.allocUnsafe(1 << 16)

  constructor(readonly file: string) {}

  poll(): void {
    if (this.fd === null) {
      try {
        this.fd = openSync(this.file, 'r')
      } catch {
        return // not created yet
      }
    }
    for (;;) {
      const n = readSync(this.fd, this.buf, 0, this.buf.length, this.offset)
      if (n === 0) break
      this.offset += n
      this.consume(this.buf.toString('latin1', 0, n))
    }
  }

  text(): string {
    try {
      return readFileSync(this.file, 'utf8')
    } catch {
      return ''
    }
  }

  /** whether a probe with this id has been logged since the last poll (and drops it) */
  seen(probeId: string): boolean {
    this.poll()
    return this.probes.delete(probeId)
  }

  private readonly probes = new Set<string>()
  /** how many runs have logged "listening on" (it comes after a successful listen) */
  listenings = 0

  private consume(text: string): void {
    const lines = (this.pending + text).split('\n')
    this.pending = lines.pop() ?? ''
    for (const line of lines) {
      const m = ACCESS_LINE_RE.exec(line)
      if (m === null) {
        // a JSON (logrus) line, or noise
        if (LISTENING_RE.test(line)) this.listenings++
        continue
      }
      const path = m[2]!
      const probeAt = path.indexOf(PROBE_PARAM + '=')
      if (probeAt !== -1) {
        this.probes.add(path.slice(probeAt + PROBE_PARAM.length + 1))
        continue
      }
      this.entries.push({
        method: m[1]!,
        path,
        status: Number(m[3]),
        bytes: m[4] === '-' ? 0 : Number(m[4]),
      })
    }
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd)
    this.fd = null
  }
}

export async function startOriginRegistry(opts: StartOriginOptions = {}): Promise<OriginRegistry> {
  installExitHook()
  const bindAddr = opts.bindAddr ?? '127.0.0.1'
  const connectAddr = bindAddr === '0.0.0.0' || bindAddr === '::' || bindAddr === '' ? '127.0.0.1' : bindAddr
  const urlHost = connectAddr.includes(':') ? `[${connectAddr}]` : connectAddr
  const listenHost = bindAddr.includes(':') ? `[${bindAddr}]` : bindAddr
  const binary = opts.binary ?? process.env['SHOAL_TEST_REGISTRY_BIN'] ?? 'docker-registry'

  const tempDir = await mkdtemp(join(tmpdir(), 'shoal-origin-'))
  tempDirs.add(tempDir)
  const rootDir = opts.rootDir ?? join(tempDir, 'storage')
  await mkdir(rootDir, { recursive: true })
  const configFile = join(tempDir, 'config.yml')
  const logFile = join(tempDir, 'registry.log')
  const reader = new LogReader(logFile)

  let port = opts.port ?? (await freePort())
  let child: ChildProcess | null = null
  let exited: Promise<void> = Promise.resolve()
  let probeSeq = 0
  let closed = false

  const nextProbe = (): string => `${process.pid}-${++probeSeq}`
  const baseUrl = (): string => `http://${urlHost}:${port}`

  const spawnOnce = async (): Promise<void> => {
    await writeFile(configFile, registryConfig(rootDir, `${listenHost}:${port}`, opts))
    reader.poll()
    const listeningsBefore = reader.listenings
    const fd = openSync(logFile, 'a')
    const argv = [...(opts.spawnPrefix ?? []), binary, 'serve', configFile]
    let proc: ChildProcess
    try {
      proc = spawn(argv[0]!, argv.slice(1), {
        stdio: ['ignore', fd, fd],
        detached: true,
        env: childEnv(),
      })
    } finally {
      closeSync(fd)
    }
    child = proc
    children.add(proc)
    proc.unref()
    const state: { exitInfo: string | null } = { exitInfo: null }
    exited = new Promise<void>((resolve) => {
      const done = (): void => {
        children.delete(proc)
        if (child === proc) child = null
        resolve()
      }
      proc.once('exit', (code, signal) => {
        state.exitInfo = `exited with ${signal ?? code}`
        done()
      })
      proc.once('error', (err) => {
        state.exitInfo = `failed to spawn ${argv[0]}: ${err.message}`
        done()
      })
    })

    const deadline = Date.now() + START_TIMEOUT_MS
    for (;;) {
      if (state.exitInfo !== null) {
        throw new Error(`docker-registry ${state.exitInfo} while starting on port ${port}:\n${tail(reader.text())}`)
      }
      try {
        // our process must have listened (another one may answer on a taken port)
        reader.poll()
        if (reader.listenings <= listeningsBefore) throw new Error('not listening yet')
        // any HTTP answer counts: with token auth /v2/ answers 401
        await probe(`${baseUrl()}/v2/?${PROBE_PARAM}=${nextProbe()}`, 1_000)
        return
      } catch (err) {
        if (Date.now() > deadline) {
          await stop()
          throw new Error(`docker-registry did not answer on ${baseUrl()} within ${START_TIMEOUT_MS} ms`, {
            cause: err,
          })
        }
        await sleep(POLL_INTERVAL_MS)
      }
    }
  }

  const stop = async (): Promise<void> => {
    const proc = child
    if (proc === null) return
    child = null
    if (proc.exitCode === null && proc.signalCode === null && proc.pid !== undefined) {
      proc.ref() // keep the loop alive until it is gone
      killTree(proc, 'SIGTERM')
      const timer = setTimeout(() => killTree(proc, 'SIGKILL'), STOP_GRACE_MS)
      try {
        await exited
      } finally {
        clearTimeout(timer)
        proc.unref()
      }
    } else {
      await exited
    }
    reader.poll()
  }

  const start = async (): Promise<void> => {
    if (closed) throw new Error('origin registry is closed')
    if (child !== null) return
    await spawnOnce()
  }

  // first start: retry on a new port if a random port got taken meanwhile
  for (let attempt = 0; ; attempt++) {
    try {
      await start()
      break
    } catch (err) {
      const busy = /address already in use/i.test(reader.text())
      if (opts.port !== undefined || !busy || attempt >= 3) {
        reader.close()
        await rm(tempDir, { recursive: true, force: true })
        tempDirs.delete(tempDir)
        throw err
      }
      port = await freePort()
    }
  }

  const since = (mark: number): OriginLogEntry[] => {
    reader.poll()
    return reader.entries.slice(mark)
  }

  return {
    get url() {
      return baseUrl()
    },
    get host() {
      return `${urlHost}:${port}`
    },
    get port() {
      return port
    },
    rootDir,
    logFile,
    stop,
    start,
    log: () => since(0),
    mark: () => {
      reader.poll()
      return reader.entries.length
    },
    blobBytesSince: (mark, digest) => {
      let total = 0
      for (const e of since(mark)) {
        if (e.method !== 'GET' || e.status < 200 || e.status > 299) continue
        const m = BLOB_PATH_RE.exec(e.path)
        if (m === null || m[1] === 'uploads') continue
        if (digest !== undefined && safeDecode(m[1]!) !== digest) continue
        total += e.bytes
      }
      return total
    },
    requestsSince: (mark, filter) => {
      const entries = since(mark)
      return filter === undefined ? entries : entries.filter(filter)
    },
    flush: async () => {
      if (child === null) {
        reader.poll()
        return
      }
      const id = nextProbe()
      await probe(`${baseUrl()}/v2/?${PROBE_PARAM}=${id}`, FLUSH_TIMEOUT_MS)
      const deadline = Date.now() + FLUSH_TIMEOUT_MS
      while (!reader.seen(id)) {
        if (Date.now() > deadline) throw new Error(`origin log did not show probe ${id}`)
        await sleep(2)
      }
    },
    rawLog: () => reader.text(),
    close: async () => {
      if (closed) return
      closed = true
      await stop()
      reader.close()
      await rm(tempDir, { recursive: true, force: true })
      tempDirs.delete(tempDir)
    },
  }
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text)
  } catch {
    return text
  }
}

function tail(text: string, lines = 20): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n')
}
