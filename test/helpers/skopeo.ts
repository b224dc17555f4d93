// skopeo, isolated from the machine's and the user's configuration, for tests that copy and
// inspect images through a mirror the way CRI-O and podman do (containers/image + registries.conf).
//
// Facts this relies on (checked with skopeo 1.9.3 from Debian bookworm):
// - A `[[registry.mirror]]` with `location = "127.0.0.1:PORT/origin.test"` makes skopeo send
//   `GET /v2/origin.test/<name>/manifests/<tag>` and `GET /v2/origin.test/<name>/blobs/<digest>`
//   to the mirror: the path part of the mirror location is prepended to the repository name, no
//   `ns` query parameter. `docker.io/alpine` goes out as `/v2/docker.io/library/alpine/...`.
// - Manifests are fetched with GET (no HEAD first); blob GETs carry no Accept header.
// - `insecure = true` means: try https first, then fall back to plain http (the https attempt
//   shows up at an http-only mirror as a garbage request), plus skip TLS verification.
// - `--src-tls-verify=false` / `--tls-verify=false` override `insecure` for every endpoint,
//   mirrors included; leave them unset to let registries.conf decide per endpoint.
// - A 404 from the mirror makes skopeo fall back to the next mirror, then to `location`.
// - `skopeo inspect` without --no-tags lists tags from the ORIGINAL registry (it ignores
//   registries.conf and goes to e.g. registry-1.docker.io): skopeoInspect passes --no-tags.
// - `--registries-conf FILE` replaces /etc/containers/registries.conf but drop-ins from
//   /etc/containers/registries.conf.d and $HOME/.config/containers/registries.conf.d still merge
//   in. HOME is pointed at an empty temp dir here; the system drop-in dir cannot be switched off.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runOk } from './proc.js'

const SKOPEO_BIN = 'skopeo'
const DEFAULT_TIMEOUT_MS = 120_000

export interface SkopeoCopyOptions {
  /** --src-tls-verify; unset lets registries.conf (`insecure`) decide */
  srcTlsVerify?: boolean
  /** --dest-tls-verify; unset lets registries.conf decide */
  destTlsVerify?: boolean
  /** a registries.conf (see writeRegistriesConf); default: an empty one */
  registriesConf?: string
  /** default 120 s */
  timeoutMs?: number
  /** inserted after `copy`, before the image names (e.g. ['--all'], ['--format', 'oci']) */
  extraArgs?: string[]
}

/** `skopeo copy src dest` (transport-prefixed names: docker://, oci:, dir: ...). Rejects with stderr on failure. */
export async function skopeoCopy(
  src: string,
  dest: string,
  opts: SkopeoCopyOptions = {},
): Promise<{ stdout: string; stderr: string }> {
  const args = ['copy']
  if (opts.srcTlsVerify !== undefined) args.push(`--src-tls-verify=${opts.srcTlsVerify}`)
  if (opts.destTlsVerify !== undefined) args.push(`--dest-tls-verify=${opts.destTlsVerify}`)
  if (opts.extraArgs !== undefined) args.push(...opts.extraArgs)
  args.push(src, dest)
  const r = await skopeo(args, opts.registriesConf, opts.timeoutMs)
  return { stdout: r.stdout, stderr: r.stderr }
}

export interface SkopeoInspectOptions {
  /** --tls-verify; unset lets registries.conf decide */
  tlsVerify?: boolean
  registriesConf?: string
  /** --raw: the manifest (or with `config`, the config blob) exactly as served */
  raw?: boolean
  /** --config: the image config instead of the summary */
  config?: boolean
  /** list tags too (talks to the ORIGINAL registry, bypassing mirrors); default false */
  tags?: boolean
  timeoutMs?: number
  extraArgs?: string[]
}

/** `skopeo inspect`, parsed from JSON: the summary by default, or the raw manifest/config. */
// biome-ignore lint/suspicious/noExplicitAny: the shape depends on raw/config and on the image
export async function skopeoInspect(ref: string, opts: SkopeoInspectOptions = {}): Promise<any> {
  return JSON.parse(await skopeoInspectText(ref, opts))
}

/** `skopeo inspect` output as text: with `raw`, the manifest bytes as served (for digest checks). */
export async function skopeoInspectText(ref: string, opts: SkopeoInspectOptions = {}): Promise<string> {
  const args = ['inspect']
  if (opts.tlsVerify !== undefined) args.push(`--tls-verify=${opts.tlsVerify}`)
  if (opts.raw === true) args.push('--raw')
  if (opts.config === true) args.push('--config')
  if (opts.raw !== true && opts.config !== true && opts.tags !== true) args.push('--no-tags')
  if (opts.extraArgs !== undefined) args.push(...opts.extraArgs)
  args.push(ref)
  const r = await skopeo(args, opts.registriesConf, opts.timeoutMs)
  return r.stdout
}

// ---------------------------------------------------------------------------------------------
// registries.conf

export interface RegistryMirror {
  /** host[:port][/path]; the path is prepended to repository names (e.g. 127.0.0.1:5050/docker.io) */
  location: string
  /** plain http allowed (tried after https), TLS not verified */
  insecure?: boolean
}

export interface RegistryEntry {
  /** which image names this entry applies to, e.g. docker.io or origin.test */
  prefix: string
  /** where `prefix` really lives, tried after every mirror */
  location: string
  insecure?: boolean
  blocked?: boolean
  /** `mirror-by-digest-only`: use the mirrors only for pulls by digest */
  mirrorByDigestOnly?: boolean
  mirrors: RegistryMirror[]
}

/** Write a containers-registries.conf(5) v2 file (CRI-O, podman, skopeo, buildah). */
export async function writeRegistriesConf(path: string, entries: RegistryEntry[]): Promise<void> {
  const lines = ['# written by shoal test helpers', 'unqualified-search-registries = []']
  for (const e of entries) {
    lines.push('', '[[registry]]', `prefix = ${tomlString(e.prefix)}`, `location = ${tomlString(e.location)}`)
    if (e.insecure !== undefined) lines.push(`insecure = ${e.insecure}`)
    if (e.blocked !== undefined) lines.push(`blocked = ${e.blocked}`)
    if (e.mirrorByDigestOnly !== undefined) lines.push(`mirror-by-digest-only = ${e.mirrorByDigestOnly}`)
    for (const m of e.mirrors) {
      lines.push('', '[[registry.mirror]]', `location = ${tomlString(m.location)}`)
      if (m.insecure !== undefined) lines.push(`insecure = ${m.insecure}`)
    }
  }
  await writeFile(path, `${lines.join('\n')}\n`)
}

// ---------------------------------------------------------------------------------------------
// isolation

interface Sandbox {
  policy: string
  emptyRegistriesConf: string
  registriesD: string
  tmp: string
  env: NodeJS.ProcessEnv
}

let sandbox: Sandbox | undefined

/**
 * One temp dir per test process: a policy.json accepting anything, an empty registries.conf,
 * an empty registries.d, and HOME / XDG dirs / DOCKER_CONFIG pointing inside it so no user's
 * auth.json, docker config or registries.conf drop-ins are read. Removed at process exit.
 */
function getSandbox(): Sandbox {
  if (sandbox !== undefined) return sandbox
  const dir = mkdtempSync(join(tmpdir(), 'shoal-skopeo-'))
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  const sub = (name: string) => {
    const p = join(dir, name)
    mkdirSync(p, { recursive: true })
    return p
  }
  const policy = join(dir, 'policy.json')
  writeFileSync(policy, `${JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] })}\n`)
  const emptyRegistriesConf = join(dir, 'registries.conf')
  writeFileSync(emptyRegistriesConf, 'unqualified-search-registries = []\n')

  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    const key = k.toUpperCase()
    if (key.endsWith('_PROXY') || key.startsWith('CONTAINERS_') || key === 'REGISTRY_AUTH_FILE') continue
    env[k] = v
  }
  env['HOME'] = sub('home')
  env['XDG_CONFIG_HOME'] = sub('home/.config')
  env['XDG_RUNTIME_DIR'] = sub('run')
  env['DOCKER_CONFIG'] = sub('docker')

  sandbox = { policy, emptyRegistriesConf, registriesD: sub('registries.d'), tmp: sub('tmp'), env }
  return sandbox
}

function skopeo(args: string[], registriesConf: string | undefined, timeoutMs: number | undefined) {
  const s = getSandbox()
  const global = [
    '--policy',
    s.policy,
    '--registries.d',
    s.registriesD,
    '--tmpdir',
    s.tmp,
    '--registries-conf',
    registriesConf ?? s.emptyRegistriesConf,
  ]
  return runOk(SKOPEO_BIN, [...global, ...args], { timeoutMs: timeoutMs ?? DEFAULT_TIMEOUT_MS, env: s.env })
}

/** A TOML basic string. JSON's escapes (\" \\ \n \uXXXX ...) are all valid TOML escapes. */
function tomlString(s: string): string {
  return JSON.stringify(s)
}
