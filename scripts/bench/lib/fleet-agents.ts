/**
 * The bench's side of fleet-agent.ts: one agent process per node namespace, started through the
 * Fleet (so teardown kills it), talking JSON lines over its stdin and stdout.
 */
import { closeSync, openSync } from 'node:fs'
import { createInterface } from 'node:readline'
import type { ChildProcess } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { PullReport, PullSpec } from '../../../test/helpers/puller.js'
import type { Fleet, Host } from './netns.js'

/** dist/scripts/bench/lib/fleet-agent.js, next to this file once built */
export const AGENT_MAIN = join(dirname(fileURLToPath(import.meta.url)), 'fleet-agent.js')
const START_TIMEOUT_MS = 20_000

export interface AgentReply {
  id: number
  ok: boolean
  error?: string
  [key: string]: unknown
}

export interface PullReply extends AgentReply {
  startedAt: number
  seconds: number
  report?: PullReport
}

export interface RunReply extends AgentReply {
  startedAt: number
  seconds: number
  code: number | null
  stderr: string
  stdout: string
}

export class FleetAgent {
  private seq = 0
  private readonly waiting = new Map<number, { resolve(r: AgentReply): void; reject(e: Error): void }>()
  private gone: Error | undefined
  private onReady: (() => void) | undefined

  private constructor(
    readonly host: Host,
    readonly child: ChildProcess,
  ) {
    const lines = createInterface({ input: child.stdout! })
    lines.on('line', (line) => {
      let msg: AgentReply
      try {
        msg = JSON.parse(line) as AgentReply
      } catch {
        return
      }
      if ((msg as { event?: string }).event === 'ready') {
        this.onReady?.()
        return
      }
      const w = this.waiting.get(msg.id)
      if (w === undefined) return
      this.waiting.delete(msg.id)
      w.resolve(msg)
    })
    child.once('exit', (code, signal) => {
      this.gone = new Error(`agent of ${host.name} exited (${signal ?? code})`)
      for (const w of this.waiting.values()) w.reject(this.gone)
      this.waiting.clear()
    })
    child.stdin?.on('error', () => {})
  }

  /** Starts the agent in the host's namespace; stderr goes to logFile. */
  static async start(fleet: Fleet, host: Host, logFile: string, agentMain = AGENT_MAIN): Promise<FleetAgent> {
    const fd = openSync(logFile, 'a')
    let child: ChildProcess
    try {
      child = fleet.spawn(host, process.execPath, [agentMain], { stdio: ['pipe', 'pipe', fd], env: agentEnv() })
    } finally {
      closeSync(fd)
    }
    const agent = new FleetAgent(host, child)
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`agent of ${host.name} did not start within ${START_TIMEOUT_MS} ms; see ${logFile}`)), START_TIMEOUT_MS)
      agent.onReady = () => {
        clearTimeout(timer)
        resolve()
      }
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`agent of ${host.name} exited while starting (${code}); see ${logFile}`))
      })
    })
    return agent
  }

  request<R extends AgentReply>(command: Record<string, unknown>): Promise<R> {
    if (this.gone !== undefined) return Promise.reject(this.gone)
    const id = ++this.seq
    return new Promise<R>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (r: AgentReply) => void, reject })
      this.child.stdin!.write(`${JSON.stringify({ ...command, id })}\n`)
    })
  }

  /** GET a URL from inside the namespace; resolves with status and body text, or undefined when unreachable */
  async get(url: string, timeoutMs = 5_000): Promise<{ status: number; body: string } | undefined> {
    const r = await this.request<AgentReply & { status?: number; body?: string }>({ op: 'http', url, timeoutMs })
    if (!r.ok) return undefined
    return { status: r.status ?? 0, body: r.body ?? '' }
  }

  async getJson<T>(url: string, timeoutMs = 5_000): Promise<T | undefined> {
    const r = await this.get(url, timeoutMs)
    if (r === undefined) return undefined
    try {
      return JSON.parse(r.body) as T
    } catch {
      return undefined
    }
  }

  pull(spec: PullSpec, at: number): Promise<PullReply> {
    return this.request<PullReply>({ op: 'pull', spec, at })
  }

  run(cmd: string, args: string[], at: number, opts: { env?: Record<string, string>; timeoutMs?: number } = {}): Promise<RunReply> {
    return this.request<RunReply>({ op: 'run', cmd, args, at, ...opts })
  }

  /** closes stdin; the agent exits */
  close(): void {
    this.child.stdin?.end()
  }
}

/** no proxies (ctr would send registry traffic through one) and no SHOAL_ or CONTAINERD_ overrides */
export function agentEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    const key = k.toUpperCase()
    if (key.endsWith('_PROXY') || key.startsWith('CONTAINERD_') || key.startsWith('SHOAL_')) continue
    env[k] = v
  }
  return env
}
