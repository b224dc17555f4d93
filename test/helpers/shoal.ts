// Runs the real Shoal daemon (the built CLI) as a child process for integration and e2e tests.
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, GiveUp, type LoggedProcess, spawnLogged, waitFor } from './proc.js'

export const SHOAL_MAIN = new URL('../../src/cli/main.js', import.meta.url).pathname

export interface ShoalLogLine {
  level: number
  msg: string
  method?: string
  path?: string
  status?: number
  bytes?: number
  source?: string
  [key: string]: unknown
}

export interface Shoal {
  readonly url: string
  readonly port: number
  readonly dataDir: string
  readonly proc: LoggedProcess
  /** every JSON log line so far */
  logs(): Promise<ShoalLogLine[]>
  /** the access-log lines ("request") so far */
  requests(): Promise<ShoalLogLine[]>
  /** the process warnings Node printed so far (`(node:PID) …`: deprecations, listener leaks) */
  warnings(): Promise<string[]>
  status(): Promise<Record<string, unknown>>
  metrics(): Promise<string>
  /** SIGTERM and wait; keeps the data dir */
  stop(): Promise<void>
  /** stop and remove the data dir (unless it was given) */
  close(): Promise<void>
}

export interface StartShoalOptions {
  upstreams?: Record<string, string>
  dataDir?: string
  args?: string[]
  env?: NodeJS.ProcessEnv
  logLevel?: string
  /** the peer layer, on loopback with ephemeral ports (default true); false: --no-p2p */
  p2p?: boolean
  /** how long to wait for /healthz (default 20 s; a loaded machine may need more) */
  startTimeoutMs?: number
}

export async function startShoal(opts: StartShoalOptions = {}): Promise<Shoal> {
  const ownDir = opts.dataDir === undefined
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), 'shoal-data-')))
  const logDir = await mkdtemp(join(tmpdir(), 'shoal-log-'))
  const logPath = join(logDir, 'shoal.log')
  const port = await freePort()
  const args = [SHOAL_MAIN, 'daemon', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--log-level', opts.logLevel ?? 'info']
  for (const [registry, url] of Object.entries(opts.upstreams ?? {})) args.push('--upstream', `${registry}=${url}`)
  if (opts.p2p === false) args.push('--no-p2p')
  else args.push('--p2p-listen', '/ip4/127.0.0.1/tcp/0', '--peer-listen', '127.0.0.1:0')
  args.push(...(opts.args ?? []))
  const proc = spawnLogged(process.execPath, args, logPath, { env: { ...process.env, ...opts.env } })
  const url = `http://127.0.0.1:${port}`
  try {
    await waitFor('shoal /healthz', async () => {
      if (!proc.running()) throw new GiveUp(new Error(`shoal exited: ${await readFile(logPath, 'utf8')}`))
      const res = await fetch(`${url}/healthz`).catch(() => undefined)
      return res?.status === 200
    }, { timeoutMs: opts.startTimeoutMs })
  } catch (err) {
    await proc.stop('SIGKILL')
    throw err
  }

  const logs = async (): Promise<ShoalLogLine[]> => {
    const text = await readFile(logPath, 'utf8')
    const out: ShoalLogLine[] = []
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue
      try {
        out.push(JSON.parse(line) as ShoalLogLine)
      } catch {
        // a line being written
      }
    }
    return out
  }
  return {
    url,
    port,
    dataDir,
    proc,
    logs,
    requests: async () => (await logs()).filter((l) => l.msg === 'request'),
    warnings: async () => (await readFile(logPath, 'utf8')).split('\n').filter((line) => /^\(node:\d+\) /.test(line)),
    status: async () => (await (await fetch(`${url}/api/v1/status`)).json()) as Record<string, unknown>,
    metrics: async () => (await fetch(`${url}/metrics`)).text(),
    stop: async () => {
      await proc.stop('SIGTERM')
    },
    close: async () => {
      await proc.stop('SIGTERM')
      if (ownDir) await rm(dataDir, { recursive: true, force: true })
      await rm(logDir, { recursive: true, force: true })
    },
  }
}
