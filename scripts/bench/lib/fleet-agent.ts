/**
 * The agent a fan-out fleet runs inside each node's network namespace (see fleet-agents.ts).
 * The node's Shoal listens on the namespace's own loopback, which nothing outside can reach;
 * the agent is the bench's hands there, driven by one JSON object per line on stdin and
 * answering one per line on stdout:
 *
 *   {"id":1,"op":"http","url":"http://127.0.0.1:5050/readyz"}       → {"id":1,"ok":true,"status":200,"body":"…"}
 *   {"id":2,"op":"pull","at":EPOCH_MS,"spec":{…PullSpec}}          → {"id":2,"ok":true,"startedAt":…,"seconds":…,"report":{…}}
 *   {"id":3,"op":"run","at":EPOCH_MS,"cmd":"ctr","args":[…]}      → {"id":3,"ok":true,"code":0,"seconds":…,"stderr":"…"}
 *
 * `at` is a wall-clock start time: the bench hands every node its start at once and each agent
 * starts on time by itself, so a burst of N nodes starts within a millisecond or two and a
 * spread schedule is kept without the bench's event loop in the way. Seconds are measured
 * here, from the scheduled start to the last byte verified (pull) or the command's exit (run).
 * The agent exits when its stdin closes.
 */
import { spawn } from 'node:child_process'
import { request } from 'node:http'
import { createInterface } from 'node:readline'
import { pullImage, type PullSpec } from '../../../test/helpers/puller.js'

const MAX_BODY = 1024 * 1024
const MAX_STDERR = 8 * 1024

interface Command {
  id: number
  op: 'http' | 'pull' | 'run'
  url?: string
  timeoutMs?: number
  at?: number
  spec?: PullSpec
  cmd?: string
  args?: string[]
  env?: Record<string, string>
}

function send(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(message)}\n`)
}

function waitUntil(at: number | undefined): Promise<void> {
  const delay = at === undefined ? 0 : at - Date.now()
  return delay > 0 ? new Promise((resolve) => setTimeout(resolve, delay)) : Promise.resolve()
}

function httpGet(url: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'GET', agent: false, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (c: Buffer) => {
        if (size < MAX_BODY) chunks.push(c)
        size += c.length
      })
      res.once('error', reject)
      res.once('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }))
    })
    req.once('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)))
    req.once('error', reject)
    req.end()
  })
}

function runCommand(cmd: string, args: string[], env: Record<string, string> | undefined, timeoutMs: number): Promise<{ code: number | null; stderr: string; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env === undefined ? process.env : { ...process.env, ...env } })
    let stderr = ''
    let stdout = ''
    child.stdout.on('data', (b: Buffer) => {
      stdout = (stdout + b.toString('utf8')).slice(-MAX_STDERR)
    })
    child.stderr.on('data', (b: Buffer) => {
      stderr = (stderr + b.toString('utf8')).slice(-MAX_STDERR)
    })
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    child.once('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stderr, stdout })
    })
  })
}

async function handle(c: Command): Promise<void> {
  try {
    switch (c.op) {
      case 'http': {
        const r = await httpGet(c.url ?? '', c.timeoutMs ?? 5_000)
        send({ id: c.id, ok: true, status: r.status, body: r.body })
        return
      }
      case 'pull': {
        if (c.spec === undefined) throw new Error('pull without spec')
        await waitUntil(c.at)
        const startedAt = Date.now()
        const t0 = performance.now()
        try {
          const report = await pullImage(c.spec)
          send({ id: c.id, ok: true, startedAt, seconds: (performance.now() - t0) / 1000, report })
        } catch (err) {
          send({ id: c.id, ok: false, startedAt, seconds: (performance.now() - t0) / 1000, error: (err as Error).message })
        }
        return
      }
      case 'run': {
        if (c.cmd === undefined) throw new Error('run without cmd')
        await waitUntil(c.at)
        const startedAt = Date.now()
        const t0 = performance.now()
        const r = await runCommand(c.cmd, c.args ?? [], c.env, c.timeoutMs ?? 600_000)
        const seconds = (performance.now() - t0) / 1000
        send({ id: c.id, ok: r.code === 0, code: r.code, startedAt, seconds, stderr: r.stderr, stdout: r.stdout, ...(r.code === 0 ? {} : { error: `${c.cmd} exited with ${r.code}: ${r.stderr.trim().slice(-600)}` }) })
        return
      }
      default:
        throw new Error(`unknown op ${String((c as { op: unknown }).op)}`)
    }
  } catch (err) {
    send({ id: c.id, ok: false, error: (err as Error).message })
  }
}

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (line.trim() === '') return
  let command: Command
  try {
    command = JSON.parse(line) as Command
  } catch {
    send({ id: -1, ok: false, error: `bad command line: ${line.slice(0, 200)}` })
    return
  }
  void handle(command)
})
lines.once('close', () => process.exit(0))
process.once('SIGTERM', () => process.exit(0))
send({ event: 'ready', pid: process.pid })
