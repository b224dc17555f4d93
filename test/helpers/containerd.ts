// A throwaway containerd for tests: its own root, state, socket and config in a temp dir, the CRI
// plugin off, and `ctr` to pull through a hosts.toml mirror exactly as a node would.
//
// Facts this relies on (checked with containerd 1.6.20 from Debian bookworm):
// - `ctr` itself resolves and fetches (the HTTP requests come from the ctr process, not from the
//   daemon); the daemon only stores content and unpacks. So `--hosts-dir` is read by ctr.
// - `--hosts-dir DIR` looks for DIR/<host>_<port>_/hosts.toml, then DIR/<host>:<port>/hosts.toml,
//   then DIR/_default/hosts.toml, and uses the FIRST one found (no merging). A directory named
//   after the bare host does not match a ref with a port. A TOML syntax error silently disables
//   the file (the pull then goes straight to the registry).
// - Requests to a mirror carry `?ns=<registry host>`: `HEAD /v2/<name>/manifests/<tag>?ns=...`.
// - `ctr image pull` always unpacks (1.6 has no --skip-unpack); `ctr content fetch` fetches the
//   same content and records the image without unpacking.
// - Both `overlayfs` and `native` unpack here (root, kernel overlay available); `native` is the
//   default because it needs no mounts at all and so also works where overlay is unavailable
//   (inside containers, on overlay or tmpfs roots, rootless).
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type LoggedProcess, ProcError, run, runOk, spawnLogged } from './proc.js'

export const DEFAULT_SNAPSHOTTER = 'native'
const CONTAINERD_BIN = 'containerd'
const CTR_BIN = 'ctr'
const NAMESPACE = 'default'
const START_TIMEOUT_MS = 20_000
const PULL_TIMEOUT_MS = 120_000
const CTR_TIMEOUT_MS = 30_000
const MAX_SOCKET_PATH = 100 // sun_path is 108 bytes
const MOUNTINFO_ESCAPE = /\\([0-7]{3})/g
const HOST_SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i

// Plugins a pull test never needs. The CRI plugin is the slow one; the `opt` plugin would create
// /opt/containerd; the others only log why they cannot start.
const DISABLED_PLUGINS = [
  'io.containerd.grpc.v1.cri',
  'io.containerd.internal.v1.opt',
  'io.containerd.snapshotter.v1.aufs',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.zfs',
]

export interface Containerd {
  /** grpc socket path, for `ctr --address` */
  address: string
  root: string
  state: string
  logPath: string
  /** the temp dir holding config.toml, root, state, socket and log */
  dir: string
  /** snapshotter ctrPull uses unless told otherwise */
  snapshotter: string
  /** kill (SIGTERM, then SIGKILL after 5 s) and wait; idempotent */
  stop(): Promise<void>
  /** stop, unmount anything left under the temp dir, then remove it; idempotent */
  close(): Promise<void>
}

export interface StartContainerdOptions {
  /** default snapshotter for ctrPull: `native` unless given */
  snapshotter?: string
  /** containerd log level, default `info` */
  logLevel?: string
}

export async function startContainerd(opts: StartContainerdOptions = {}): Promise<Containerd> {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-ctd-'))
  const root = join(dir, 'root')
  const state = join(dir, 'state')
  const address = join(dir, 'containerd.sock')
  const logPath = join(dir, 'containerd.log')
  const configPath = join(dir, 'config.toml')
  if (address.length > MAX_SOCKET_PATH) {
    await rm(dir, { recursive: true, force: true })
    throw new ProcError(`socket path too long for a unix socket: ${address} (set TMPDIR shorter)`, 'ERR_SOCKET_PATH')
  }
  await mkdir(join(dir, 'tmp'))
  await writeFile(
    configPath,
    [
      'version = 2',
      `root = ${tomlString(root)}`,
      `state = ${tomlString(state)}`,
      `temp = ${tomlString(join(dir, 'tmp'))}`,
      `disabled_plugins = [${DISABLED_PLUGINS.map(tomlString).join(', ')}]`,
      '',
      '[grpc]',
      `  address = ${tomlString(address)}`,
      '',
      '[debug]',
      '  address = ""',
      `  level = ${tomlString(opts.logLevel ?? 'info')}`,
      '',
      '[metrics]',
      '  address = ""',
      '',
    ].join('\n'),
  )

  const proc = spawnLogged(CONTAINERD_BIN, ['--config', configPath], logPath, { env: cleanEnv() })

  let closing: Promise<void> | undefined
  const c: Containerd = {
    address,
    root,
    state,
    logPath,
    dir,
    snapshotter: opts.snapshotter ?? DEFAULT_SNAPSHOTTER,
    stop: async () => {
      await proc.stop('SIGTERM', 5_000)
    },
    close: () => {
      closing ??= (async () => {
        await proc.stop('SIGTERM', 5_000)
        await unmountUnder(dir)
        await rm(dir, { recursive: true, force: true })
      })()
      return closing
    },
  }

  try {
    await waitUntilServing(c, proc)
  } catch (e) {
    await c.close()
    throw e
  }
  return c
}

async function waitUntilServing(c: Containerd, proc: LoggedProcess): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS
  let why = 'timed out'
  while (Date.now() < deadline) {
    if (!proc.running()) {
      const status = await proc.exited
      why = `exited (code ${status.code}, signal ${status.signal})${status.error ? `: ${status.error.message}` : ''}`
      break
    }
    const r = await run(CTR_BIN, ['--address', c.address, 'version'], { timeoutMs: 5_000, env: cleanEnv() })
    if (r.code === 0) return
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const log = await readFile(c.logPath, 'utf8').catch(() => '')
  throw new ProcError(`containerd did not start (${why}); last log lines:\n${tail(log, 20)}`, 'ERR_CONTAINERD_START')
}

// ---------------------------------------------------------------------------------------------
// hosts.toml

export interface HostsTomlOptions {
  /** `server = ...`: the registry itself, tried after the mirror. Omitted: containerd's default
   * (https://<registryHost>, https://registry-1.docker.io for docker.io). */
  server?: string
  /** default ["pull", "resolve"] */
  capabilities?: string[]
  /** `skip_verify = true` on the mirror entry */
  skipVerify?: boolean
  /** `override_path = true`: use the mirror URL's path as the API root instead of appending /v2 */
  overridePath?: boolean
}

/**
 * Write hostsDir/<registryHost>/hosts.toml (containerd certs.d format) that sends pulls for
 * registryHost to mirrorUrl first. registryHost is how the image ref spells the registry:
 * `docker.io` (not registry-1.docker.io), `ghcr.io`, `127.0.0.1:5000` — the directory keeps the
 * `host:port` form, which containerd matches (after the `host_port_` form, which this never writes).
 * mirrorUrl without a scheme gets `http://`.
 */
export async function writeHostsToml(
  hostsDir: string,
  registryHost: string,
  mirrorUrl: string,
  opts: HostsTomlOptions = {},
): Promise<void> {
  if (registryHost === '' || registryHost.includes('/')) {
    throw new ProcError(`registryHost must be a host[:port] or _default, got ${JSON.stringify(registryHost)}`, 'ERR_ARG')
  }
  const mirror = HOST_SCHEME.test(mirrorUrl) ? mirrorUrl : `http://${mirrorUrl}`
  const capabilities = opts.capabilities ?? ['pull', 'resolve']
  const lines = [`# ${registryHost}: pull through ${mirror} first`]
  if (opts.server !== undefined) lines.push(`server = ${tomlString(opts.server)}`)
  lines.push('', `[host.${tomlString(mirror)}]`, `  capabilities = [${capabilities.map(tomlString).join(', ')}]`)
  if (opts.skipVerify === true) lines.push('  skip_verify = true')
  if (opts.overridePath === true) lines.push('  override_path = true')
  const dir = join(hostsDir, registryHost)
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'hosts.toml'), `${lines.join('\n')}\n`)
}

// ---------------------------------------------------------------------------------------------
// ctr

export interface CtrPullOptions {
  /** passed as --hosts-dir */
  hostsDir: string
  /** --plain-http: the default scheme for hosts without one (hosts.toml entries carry their own) */
  plainHttp?: boolean
  /** e.g. linux/arm64 */
  platform?: string
  allPlatforms?: boolean
  /** default true (`ctr image pull`); false uses `ctr content fetch`: same requests, no unpack */
  unpack?: boolean
  /** default: the daemon's `snapshotter` */
  snapshotter?: string
  /** default 120 s */
  timeoutMs?: number
  extraArgs?: string[]
}

export interface CtrPullResult {
  stdout: string
  stderr: string
  durationMs: number
}

/** Pull ref with ctr. Rejects with an Error whose message holds ctr's stderr when the pull fails. */
export async function ctrPull(c: Containerd, ref: string, opts: CtrPullOptions): Promise<CtrPullResult> {
  const unpack = opts.unpack ?? true
  const args = unpack ? ['images', 'pull'] : ['content', 'fetch']
  args.push('--hosts-dir', opts.hostsDir)
  if (opts.plainHttp === true) args.push('--plain-http')
  if (opts.platform !== undefined) args.push('--platform', opts.platform)
  if (opts.allPlatforms === true) args.push('--all-platforms')
  if (unpack) args.push('--snapshotter', opts.snapshotter ?? c.snapshotter)
  if (opts.extraArgs !== undefined) args.push(...opts.extraArgs)
  args.push(ref)
  const started = performance.now()
  const r = await ctr(c, args, { timeoutMs: opts.timeoutMs ?? PULL_TIMEOUT_MS })
  return { stdout: r.stdout, stderr: r.stderr, durationMs: performance.now() - started }
}

/** Image names known to the daemon (namespace `default`), sorted. */
export async function ctrImages(c: Containerd): Promise<string[]> {
  const r = await ctr(c, ['images', 'ls', '-q'])
  return r.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .sort()
}

/** Run any ctr subcommand against this daemon; rejects (with stderr) on a non-zero exit. */
export function ctr(
  c: Containerd,
  args: readonly string[],
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<{ stdout: string; stderr: string }> {
  return runOk(CTR_BIN, ['--address', c.address, '--namespace', NAMESPACE, ...args], {
    timeoutMs: opts.timeoutMs ?? CTR_TIMEOUT_MS,
    env: cleanEnv(),
    signal: opts.signal,
  })
}

// ---------------------------------------------------------------------------------------------
// internals

/**
 * The environment for containerd and ctr: no HTTP(S)_PROXY (ctr would send registry traffic for
 * non-loopback names such as origin.test through it) and no CONTAINERD_* overrides.
 */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    const key = k.toUpperCase()
    if (key.endsWith('_PROXY') || key.startsWith('CONTAINERD_')) continue
    env[k] = v
  }
  return env
}

/** Unmount every mount point at or below dir, deepest first (lazily if busy). */
async function unmountUnder(dir: string): Promise<void> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '')
  const points = info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map((p) => p.replace(MOUNTINFO_ESCAPE, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8))))
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length)
  for (const p of new Set(points)) {
    const r = await run('umount', [p], { timeoutMs: 10_000 }).catch(() => undefined)
    if (r?.code !== 0) await run('umount', ['-l', p], { timeoutMs: 10_000 }).catch(() => undefined)
  }
}

/** A TOML basic string. JSON's escapes (\" \\ \n \uXXXX ...) are all valid TOML escapes. */
function tomlString(s: string): string {
  return JSON.stringify(s)
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n')
}
