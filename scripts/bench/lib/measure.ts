/**
 * Measurement helpers for benchmarks: a verifying HTTP pull, per-process CPU time and peak
 * memory from /proc, medians, ratios and a plain-text table.
 */
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { type Agent, request } from 'node:http'

export class VerificationError extends Error {
  readonly code = 'ERR_BENCH_VERIFY'
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'VerificationError'
  }
}

// ---- statistics ------------------------------------------------------------------------------

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

export function min(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.min(...values)
}

export function max(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.max(...values)
}

/** `1.23×` */
export function formatRatio(ratio: number, digits = 2): string {
  return Number.isFinite(ratio) ? `${ratio.toFixed(digits)}×` : 'n/a'
}

/** a/b, NaN when b is 0 */
export function ratio(a: number, b: number): number {
  return b === 0 ? Number.NaN : a / b
}

/** decimal megabytes per second */
export function mbps(bytes: number, seconds: number): number {
  return seconds > 0 ? bytes / 1e6 / seconds : Number.NaN
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = bytes
  let i = 0
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}

/**
 * A size argument of a bench's command line: a byte count, or one with a binary unit (`128MiB`,
 * `24M`, `1GiB`: k, m, g and t are powers of 1024 here, with or without `iB`/`B`). Throws on
 * anything else, or on less than one byte.
 */
export function parseSizeArg(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(text.trim())
  if (m === null) throw new Error(`bad size "${text}" (e.g. 1GiB, 256M, 1073741824)`)
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[(m[2] as string).toLowerCase()] as number
  const bytes = Math.round(Number(m[1]) * unit)
  if (!Number.isSafeInteger(bytes) || bytes < 1) throw new Error(`bad size "${text}"`)
  return bytes
}

export function round(value: number, digits = 3): number {
  if (!Number.isFinite(value)) return value
  const f = 10 ** digits
  return Math.round(value * f) / f
}

// ---- verified HTTP pull ------------------------------------------------------------------------

export interface PullOptions {
  /** `sha256:<hex>`: the body must hash to it, else VerificationError */
  expectDigest: string
  /** the body must have exactly this many bytes */
  expectSize?: number
  headers?: Record<string, string>
  /** default: a new connection (agent: false) */
  agent?: Agent | false
  /** abort the pull when no byte arrived for this long; default 120 s */
  idleTimeoutMs?: number
}

export interface PullResult {
  bytes: number
  /** request sent → last byte hashed */
  seconds: number
  /** request sent → response headers */
  ttfbSeconds: number
  /** silence before the final chunk (a server holding back the last byte until it verified the blob shows here) */
  lastChunkGapSeconds: number
  /** number of body chunks received */
  chunks: number
  status: number
  digest: string
}

/** GETs a URL with node:http, hashing the body while it streams; rejects unless it is 200 and hashes to expectDigest. */
export function pullBlob(url: string, opts: PullOptions): Promise<PullResult> {
  const colon = opts.expectDigest.indexOf(':')
  const algorithm = opts.expectDigest.slice(0, colon)
  if (algorithm !== 'sha256' && algorithm !== 'sha512') throw new VerificationError(`unsupported digest ${opts.expectDigest}`)
  return new Promise<PullResult>((resolve, reject) => {
    const started = process.hrtime.bigint()
    const elapsed = (): number => Number(process.hrtime.bigint() - started) / 1e9
    const req = request(url, { method: 'GET', headers: opts.headers ?? {}, agent: opts.agent ?? false }, (res) => {
      const ttfbSeconds = elapsed()
      const status = res.statusCode ?? 0
      if (status !== 200) {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => {
          if (chunks.length < 16) chunks.push(c)
        })
        res.once('end', () =>
          reject(new VerificationError(`GET ${url}: HTTP ${status} ${Buffer.concat(chunks).toString('utf8').slice(0, 300)}`)),
        )
        res.once('error', reject)
        return
      }
      const hash = createHash(algorithm)
      let bytes = 0
      let chunks = 0
      let lastAt = ttfbSeconds
      let lastChunkGapSeconds = 0
      res.on('data', (chunk: Buffer) => {
        const now = elapsed()
        lastChunkGapSeconds = now - lastAt
        lastAt = now
        chunks++
        hash.update(chunk)
        bytes += chunk.length
      })
      res.once('error', (err) => reject(new VerificationError(`GET ${url}: body failed after ${bytes} bytes: ${err.message}`, { cause: err })))
      res.once('aborted', () => reject(new VerificationError(`GET ${url}: body cut after ${bytes} bytes`)))
      res.once('end', () => {
        const seconds = elapsed()
        if (!res.complete) {
          reject(new VerificationError(`GET ${url}: body cut after ${bytes} bytes`))
          return
        }
        const digest = `${algorithm}:${hash.digest('hex')}`
        if (digest !== opts.expectDigest) {
          reject(new VerificationError(`GET ${url}: body of ${bytes} bytes hashes to ${digest}, expected ${opts.expectDigest}`))
          return
        }
        if (opts.expectSize !== undefined && bytes !== opts.expectSize) {
          reject(new VerificationError(`GET ${url}: ${bytes} bytes, expected ${opts.expectSize}`))
          return
        }
        resolve({ bytes, seconds, ttfbSeconds, lastChunkGapSeconds, chunks, status, digest })
      })
    })
    req.setTimeout(opts.idleTimeoutMs ?? 120_000, () => req.destroy(new VerificationError(`GET ${url}: idle for ${opts.idleTimeoutMs ?? 120_000} ms`)))
    req.once('error', reject)
    req.end()
  })
}

// ---- processes ---------------------------------------------------------------------------------

let clockTicks: number | undefined

/** USER_HZ: /proc/<pid>/stat counts CPU time in these (100 on every Linux that matters) */
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    clockTicks = 100
    const fromEnv = Number(process.env['SHOAL_BENCH_CLK_TCK'])
    if (Number.isInteger(fromEnv) && fromEnv > 0) clockTicks = fromEnv
  }
  return clockTicks
}

/** whole-machine CPU seconds from /proc/stat: busy, total, and the busy time's user (with nice), system, interrupt and softirq parts */
export function machineCpuTimes(): { busy: number; total: number; user: number; system: number; irq: number; softirq: number } {
  try {
    const line = readFileSync('/proc/stat', 'latin1').split('\n')[0] ?? ''
    const f = line.trim().split(/\s+/).slice(1).map(Number)
    const at = (i: number): number => (f[i] ?? 0) / ticksPerSecond()
    const idle = at(3) + at(4)
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0) / ticksPerSecond()
    return { busy: total - idle, total, user: at(0) + at(1), system: at(2), irq: at(5), softirq: at(6) }
  } catch {
    const nan = Number.NaN
    return { busy: nan, total: nan, user: nan, system: nan, irq: nan, softirq: nan }
  }
}

/**
 * user and system CPU seconds of a process (all its threads) with its reaped children, its
 * minor page faults (pages it touched for the first time: fresh memory) and its threads' context
 * switches (see contextSwitches), or undefined when it is gone
 */
export function processCpuTimes(pid: number): { user: number; system: number; minorFaults: number; switches: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // minflt is field 10 (f[7]); utime, stime, cutime, cstime are fields 14-17 (f[11..14])
    return {
      user: (Number(f[11]) + Number(f[13])) / ticksPerSecond(),
      system: (Number(f[12]) + Number(f[14])) / ticksPerSecond(),
      minorFaults: Number(f[7]),
      switches: contextSwitches(pid),
    }
  } catch {
    return undefined
  }
}

/**
 * Context switches of a process's threads alive now, voluntary (it waited: an event-loop wake-up
 * each, mostly) and not (preempted), from /proc/<pid>/task/<tid>/status
 */
export function contextSwitches(pid: number): number {
  let n = 0
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'latin1')
      for (const m of status.matchAll(/^(?:voluntary|nonvoluntary)_ctxt_switches:\s+(\d+)$/gm)) n += Number(m[1])
    } catch {
      // the thread ended meanwhile
    }
  }
  return n
}

/** user + system CPU seconds of a process (all its threads), from /proc/<pid>/stat */
export function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
  // comm (field 2) is in parentheses and may hold spaces: split after the last ')'
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // fields[0] is field 3 (state); utime is field 14, stime field 15
  const utime = Number(fields[11])
  const stime = Number(fields[12])
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`cannot parse /proc/${pid}/stat`)
  return (utime + stime) / ticksPerSecond()
}

export interface ThreadCpu {
  /** `main` for the main thread; else the thread's comm (`other threads` for Node's unnamed libuv pool and V8 workers) */
  name: string
  tid: number
  user: number
  system: number
}

/** per-thread user and system CPU seconds of a process, from /proc/<pid>/task/<tid>/stat */
export function threadCpuSeconds(pid: number): ThreadCpu[] {
  const out: ThreadCpu[] = []
  for (const entry of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${entry}/stat`, 'latin1')
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
      // Node 20 leaves its libuv pool and V8 platform threads named like the process
      const name = Number(entry) === pid ? 'main' : comm === 'node' ? 'other threads' : comm
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      out.push({ name, tid: Number(entry), user: Number(fields[11]) / ticksPerSecond(), system: Number(fields[12]) / ticksPerSecond() })
    } catch {
      // the thread ended meanwhile
    }
  }
  return out
}

/** CPU seconds per thread name (user, system) spent between two threadCpuSeconds() snapshots */
export function threadCpuDelta(before: ThreadCpu[], after: ThreadCpu[]): Record<string, { user: number; system: number }> {
  const prior = new Map(before.map((t) => [t.tid, t]))
  const out: Record<string, { user: number; system: number }> = {}
  for (const t of after) {
    const b = prior.get(t.tid)
    const slot = out[t.name] ?? { user: 0, system: 0 }
    slot.user += t.user - (b?.user ?? 0)
    slot.system += t.system - (b?.system ?? 0)
    out[t.name] = slot
  }
  return out
}

/** user + system CPU seconds of this process */
export function selfCpuSeconds(): number {
  const { user, system } = process.cpuUsage()
  return (user + system) / 1e6
}

/** a field of /proc/<pid>/status in bytes (VmHWM, VmRSS, ...), or undefined */
export function procStatusBytes(pid: number, field: string): number | undefined {
  const status = readFileSync(`/proc/${pid}/status`, 'latin1')
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status)
  return m === null ? undefined : Number(m[1]) * 1024
}

/** peak resident set size (VmHWM) of a process, bytes */
export function peakRssBytes(pid: number): number {
  const v = procStatusBytes(pid, 'VmHWM')
  if (v === undefined) throw new Error(`no VmHWM in /proc/${pid}/status`)
  return v
}

export function rssBytes(pid: number): number {
  const v = procStatusBytes(pid, 'VmRSS')
  if (v === undefined) throw new Error(`no VmRSS in /proc/${pid}/status`)
  return v
}

/** Samples VmRSS of a process every intervalMs; stop() returns the highest sample. */
export function sampleRss(pid: number, intervalMs = 50): { stop(): number } {
  let peak = 0
  const sample = (): void => {
    try {
      peak = Math.max(peak, rssBytes(pid))
    } catch {
      // the process is gone
    }
  }
  sample()
  const timer = setInterval(sample, intervalMs)
  return {
    stop: () => {
      clearInterval(timer)
      sample()
      return peak
    },
  }
}

/** CPU seconds a process (or this process, pid undefined) spends while fn runs */
export async function cpuDuring<T>(pids: readonly (number | 'self')[], fn: () => Promise<T>): Promise<{ result: T; cpu: number[] }> {
  const read = (p: number | 'self'): number => (p === 'self' ? selfCpuSeconds() : processCpuSeconds(p))
  const before = pids.map(read)
  const result = await fn()
  const cpu = pids.map((p, i) => read(p) - before[i]!)
  return { result, cpu }
}

// ---- output --------------------------------------------------------------------------------------

/** A plain-text table: the first row is the header; columns after the first are right-aligned. */
export function formatTable(rows: readonly (readonly string[])[]): string {
  if (rows.length === 0) return ''
  const widths: number[] = []
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length)
    })
  }
  const line = (row: readonly string[]): string =>
    row
      .map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
      .join('  ')
      .trimEnd()
  const [head, ...body] = rows
  return [line(head!), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n')
}

export function printTable(title: string, rows: readonly (readonly string[])[]): void {
  process.stdout.write(`\n${title}\n${formatTable(rows)}\n`)
}
