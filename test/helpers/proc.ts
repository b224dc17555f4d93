// Child-process helpers shared by the test helpers that drive real programs (containerd, ctr,
// skopeo, docker-registry). Every child spawned here is tracked and killed when the test process
// exits, so a failing test never leaves a daemon behind.
import { type ChildProcess, spawn } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { createServer } from 'node:net'

const DEFAULT_RUN_TIMEOUT_MS = 60_000
const DEFAULT_STOP_GRACE_MS = 5_000
const MAX_CAPTURE_BYTES = 16 * 1024 * 1024
const SHELL_SAFE = /^[\w@%+=:,./-]+$/

export class ProcError extends Error {
  readonly code: string
  constructor(message: string, code: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'ProcError'
    this.code = code
  }
}

/** The command ran but exited non-zero (or by a signal). Carries its captured output. */
export class CommandFailedError extends ProcError {
  readonly result: RunResult
  constructor(cmd: string, args: readonly string[], result: RunResult) {
    const how = result.code !== null ? `exit code ${result.code}` : `signal ${result.signal}`
    super(
      `${formatCommand(cmd, args)} failed (${how}):\n${result.stderr.trim() || result.stdout.trim()}`,
      'ERR_COMMAND_FAILED',
    )
    this.name = 'CommandFailedError'
    this.result = result
  }
}

/** The command did not finish within its time limit; it was killed. Carries partial output. */
export class CommandTimeoutError extends ProcError {
  readonly stdout: string
  readonly stderr: string
  constructor(cmd: string, args: readonly string[], timeoutMs: number, stdout: string, stderr: string) {
    super(
      `${formatCommand(cmd, args)} timed out after ${timeoutMs} ms:\n${stderr.trim() || stdout.trim()}`,
      'ERR_COMMAND_TIMEOUT',
    )
    this.name = 'CommandTimeoutError'
    this.stdout = stdout
    this.stderr = stderr
  }
}

export interface RunResult {
  stdout: string
  stderr: string
  /** exit code, or null when the process ended by a signal */
  code: number | null
  signal: NodeJS.Signals | null
}

export interface RunOptions {
  /** kill (SIGKILL) and reject with CommandTimeoutError after this long; default 60 s */
  timeoutMs?: number
  /** full environment of the child (default: this process's) */
  env?: NodeJS.ProcessEnv
  /** written to the child's stdin, which is then closed */
  input?: string | Uint8Array
  cwd?: string
  signal?: AbortSignal
}

// ---------------------------------------------------------------------------------------------
// tracking

const live = new Set<ChildProcess>()
let hooksInstalled = false

function installExitHooks(): void {
  if (hooksInstalled) return
  hooksInstalled = true
  // 'exit' handlers must be synchronous: a plain kill is.
  process.on('exit', () => killAll('SIGKILL'))
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      killAll('SIGKILL')
      // Our listener is gone now (once), so re-raising gets the default behaviour unless
      // somebody else listens too.
      process.kill(process.pid, sig)
    })
  }
}

function track(child: ChildProcess): void {
  installExitHooks()
  live.add(child)
  child.once('exit', () => live.delete(child))
  child.once('error', () => live.delete(child))
}

/** Kill every tracked child that is still running. Synchronous; safe in exit handlers. */
export function killAll(signal: NodeJS.Signals = 'SIGKILL'): void {
  for (const child of live) {
    try {
      child.kill(signal)
    } catch {
      // already gone
    }
  }
}

/** Pids of tracked children still running: tests can assert this is empty in after(). */
export function liveChildren(): number[] {
  return [...live].flatMap((c) => (c.pid === undefined ? [] : [c.pid]))
}

// ---------------------------------------------------------------------------------------------
// run

/**
 * Run a command to completion and capture its output. Resolves with the exit code whatever it
 * is; rejects only when the program cannot be started, on timeout, or on abort.
 */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_RUN_TIMEOUT_MS
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(new ProcError(`${formatCommand(cmd, args)} aborted`, 'ABORT_ERR', { cause: opts.signal.reason }))
      return
    }
    const child = spawn(cmd, args, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    })
    track(child)

    const out: Buffer[] = []
    const err: Buffer[] = []
    let outBytes = 0
    let errBytes = 0
    child.stdout?.on('data', (b: Buffer) => {
      if (outBytes < MAX_CAPTURE_BYTES) out.push(b)
      outBytes += b.length
    })
    child.stderr?.on('data', (b: Buffer) => {
      if (errBytes < MAX_CAPTURE_BYTES) err.push(b)
      errBytes += b.length
    })
    if (opts.input !== undefined && child.stdin !== null) {
      child.stdin.on('error', () => {}) // EPIPE when the child does not read its input
      child.stdin.end(opts.input)
    }

    let settled = false
    let failure: Error | undefined
    const stdout = () => Buffer.concat(out).toString('utf8')
    const stderr = () => Buffer.concat(err).toString('utf8')

    const timer = setTimeout(() => {
      failure = new CommandTimeoutError(cmd, args, timeoutMs, stdout(), stderr())
      child.kill('SIGKILL')
    }, timeoutMs)
    const onAbort = () => {
      failure = new ProcError(`${formatCommand(cmd, args)} aborted`, 'ABORT_ERR', { cause: opts.signal?.reason })
      child.kill('SIGKILL')
    }
    opts.signal?.addEventListener('abort', onAbort, { once: true })
    const finish = () => {
      settled = true
      clearTimeout(timer)
      opts.signal?.removeEventListener('abort', onAbort)
    }

    child.once('error', (e) => {
      if (settled) return
      finish()
      reject(new ProcError(`cannot run ${formatCommand(cmd, args)}: ${e.message}`, 'ERR_SPAWN', { cause: e }))
    })
    // 'close' (not 'exit'): all output has been read by then.
    child.once('close', (code, signal) => {
      if (settled) return
      finish()
      if (failure !== undefined) reject(failure)
      else resolve({ stdout: stdout(), stderr: stderr(), code, signal })
    })
  })
}

/** Like run(), but rejects with CommandFailedError (whose message holds stderr) unless the exit code is 0. */
export async function runOk(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const result = await run(cmd, args, opts)
  if (result.code !== 0) throw new CommandFailedError(cmd, args, result)
  return result
}

// ---------------------------------------------------------------------------------------------
// long-running children

export interface ExitStatus {
  code: number | null
  signal: NodeJS.Signals | null
  /** set when the program could not be started */
  error?: Error
}

export interface LoggedProcess {
  readonly child: ChildProcess
  readonly pid: number | undefined
  readonly logPath: string
  /**
   * Resolves (never rejects) once the process is gone. The child is unref'd: awaiting this alone
   * does not keep the event loop alive, so prefer stop().
   */
  readonly exited: Promise<ExitStatus>
  /** true until the process has exited */
  running(): boolean
  /**
   * Send `signal` (default SIGTERM), wait up to graceMs (default 5 s), then SIGKILL and wait.
   * Idempotent; resolves with the exit status.
   */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<ExitStatus>
}

export interface SpawnLoggedOptions {
  env?: NodeJS.ProcessEnv
  cwd?: string
}

/**
 * Start a long-running program with stdout and stderr appended to logPath. The child is tracked,
 * does not keep the test process alive, and is killed (SIGKILL) when the test process exits or
 * gets SIGINT/SIGTERM/SIGHUP.
 */
export function spawnLogged(
  cmd: string,
  args: readonly string[],
  logPath: string,
  opts: SpawnLoggedOptions = {},
): LoggedProcess {
  const fd = openSync(logPath, 'a')
  let child: ChildProcess
  try {
    child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['ignore', fd, fd] })
  } finally {
    closeSync(fd) // the child holds its own copy
  }
  track(child)
  // A daemon left running must not keep the test process alive: unref it, and let the exit
  // hooks kill it when the process ends. stop() re-refs it while it waits.
  child.unref()

  let done = false
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('error', (error) => {
      done = true
      resolve({ code: null, signal: null, error })
    })
    child.once('exit', (code, signal) => {
      done = true
      resolve({ code, signal })
    })
  })

  let stopping: Promise<ExitStatus> | undefined
  const stop = (signal: NodeJS.Signals = 'SIGTERM', graceMs = DEFAULT_STOP_GRACE_MS): Promise<ExitStatus> => {
    if (stopping !== undefined) return stopping
    stopping = (async () => {
      if (done) return exited
      child.ref()
      child.kill(signal)
      let timer: NodeJS.Timeout | undefined
      const timedOut = await Promise.race([
        exited.then(() => false),
        new Promise<boolean>((r) => {
          timer = setTimeout(() => r(true), graceMs)
        }),
      ])
      clearTimeout(timer)
      if (timedOut) child.kill('SIGKILL')
      return exited
    })()
    return stopping
  }

  return { child, pid: child.pid, logPath, exited, running: () => !done, stop }
}

// ---------------------------------------------------------------------------------------------
// small utilities

/**
 * A TCP port that was free on `host` a moment ago, picked below the kernel's ephemeral range
 * (32768 and up by default). A port the kernel chose for a listen on port 0 is an ephemeral one,
 * and a daemon binding its own port 0 (the peer data port) could be handed the very port chosen
 * for its HTTP listener before it bound it (seen once: EADDRINUSE at start).
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000)
    const free = await new Promise<boolean>((resolve) => {
      const srv = createServer()
      srv.unref()
      srv.once('error', () => resolve(false))
      srv.listen(port, host, () => srv.close(() => resolve(true)))
    })
    if (free) return port
    if (attempt >= 100) throw new Error(`no free port found on ${host}`)
  }
}

/** Poll `check` every intervalMs until it returns true, or throw after timeoutMs. */
/** Thrown by a waitFor check: stop waiting at once and fail with `cause` (e.g. the process exited). */
export class GiveUp extends Error {
  constructor(cause: Error) {
    super(cause.message, { cause })
    this.name = 'GiveUp'
  }
}

export async function waitFor(
  what: string,
  check: () => Promise<boolean> | boolean,
  opts: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 20_000)
  const intervalMs = opts.intervalMs ?? 50
  let lastError: unknown
  while (Date.now() < deadline) {
    try {
      if (await check()) return
    } catch (e) {
      if (e instanceof GiveUp) throw e.cause
      lastError = e
    }
    await new Promise((r) => setTimeout(r, intervalMs))
  }
  throw new ProcError(`timed out waiting for ${what}`, 'ERR_WAIT_TIMEOUT', { cause: lastError })
}

export function formatCommand(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (SHELL_SAFE.test(a) ? a : JSON.stringify(a))).join(' ')
}
