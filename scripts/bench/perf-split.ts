/**
 * Where the daemons' CPU went in a `perf` recording, in units of the time they spent in sha256
 * (a cost per byte hashed, so recordings of runs at different rates compare). Record a fan-out
 * round with JavaScript symbols, then keep the daemons' samples:
 *
 *   scripts/bench/fanout --mode shoal --node-flags=--perf-basic-prof    # and, mid-round:
 *   perf record -a -g -F 499 -o perf.data -- sleep 15
 *   perf script -i perf.data --pid "$(ls /tmp/perf-*.map | sed 's/.*perf-\([0-9]*\).map/\1/' | paste -sd,)" -F tid,ip,sym > daemons.txt
 *   npm run build && node dist/scripts/bench/perf-split.js daemons.txt [--top 15] [--under serveInfo]
 *
 * It prints the samples with no JavaScript frame by kind (interrupts, page faults, the garbage
 * collector, TurboFan, TLS, each system call); the samples with one by their outermost frame that
 * is not the event loop's own plumbing; every Shoal function by the samples it is on (inclusive);
 * the tier of the innermost JavaScript frame (`*` TurboFan, `^` baseline, `~` interpreter); the
 * samples by package (the outermost npm package or Shoal module on the stack, and the share with
 * a libp2p frame anywhere on it); with `-F pid,tid,...` output, the samples by thread (each
 * process's main thread, or its other threads: V8's helpers, libuv's pool) and kind; and with
 * `--under NAME`, what the outermost frame matching NAME called, by samples.
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { LIBP2P, owner } from './lib/owners.js'

/** the event loop's and Node's dispatching frames, passed over to find who did the work */
const PLUMBING = ['processTicksAndRejections', 'processTimers', 'listOnTimeout', 'onStreamRead', 'emit node', 'runMicrotasks', 'emitReadable_']

/** a sample's frames (innermost first), and whether it was taken on its process's main thread (unknown without `-F pid,tid`) */
interface Sample {
  frames: string[]
  main: boolean | undefined
}

/**
 * samples of `perf script -F tid,ip,sym` output (or `-F pid,tid,ip,sym`, for `resolve` and the
 * threads): a frame's line starts with a tab, a sample's header does not (perf pads the tid with
 * spaces). `resolve` may rename a frame by its process and address.
 */
function parse(text: string, resolve?: (pid: string, ip: number) => string | undefined): Sample[] {
  const samples: Sample[] = []
  let current: Sample | undefined
  let pid = ''
  for (const line of text.split('\n')) {
    if (line.trim() === '') {
      if (current !== undefined) samples.push(current)
      current = undefined
    } else if (!line.startsWith('\t')) {
      if (current !== undefined) samples.push(current)
      const ids = /^\s*(\d+)\/(\d+)/.exec(line)
      pid = ids?.[1] ?? line.trim().split(/\s/)[0] ?? ''
      current = { frames: [], main: ids === null ? undefined : ids[1] === ids[2] }
    } else {
      const [ip, ...parts] = line.trim().split(/\s+/)
      const sym = parts.join(' ') || '?'
      // (only what perf named from the JIT's map: native code is named from its binary)
      const jit = resolve !== undefined && (sym.startsWith('JS:') || sym.startsWith('Eval:'))
      current?.frames.push((jit ? resolve(pid, Number.parseInt(ip ?? '', 16)) : undefined) ?? sym)
    }
  }
  if (current !== undefined) samples.push(current)
  return samples
}

/**
 * Names JIT code by V8's perf map files (`DIR/perf-<pid>.map`, written by --perf-basic-prof),
 * the latest entry at an address winning. perf itself may name a frame by an older entry whose
 * code was freed and its address reused (bytecode is flushed, code moves): in a 16-node round,
 * frames named after modules' top-level code (ajv, yaml, prom-client, run once at start-up) took
 * a tenth of the samples with a JavaScript frame. The latest entry is right for code that still
 * lived when the map was last written to; a sample in code freed before the round ended may
 * still be misnamed.
 */
function mapResolver(dir: string): (pid: string, ip: number) => string | undefined {
  interface Entry {
    start: number
    end: number
    name: string
    seq: number
  }
  const maps = new Map<string, { entries: Entry[]; longest: number } | null>()
  // (entries of the JIT's code only: the map also names builtins inside the node binary)
  const load = (pid: string): { entries: Entry[]; longest: number } | null => {
    let text: string
    try {
      text = readFileSync(`${dir}/perf-${pid}.map`, 'utf8')
    } catch {
      return null
    }
    const entries = text
      .split('\n')
      .map((l, seq): Entry => {
        const [start, size, ...name] = l.split(' ')
        const at = Number.parseInt(start ?? '', 16)
        return { start: at, end: at + Number.parseInt(size ?? '', 16), name: name.join(' '), seq }
      })
      .filter((e) => e.name.startsWith('JS:') || e.name.startsWith('Eval:'))
      .sort((a, b) => a.start - b.start)
    return { entries, longest: entries.reduce((n, e) => Math.max(n, e.end - e.start), 0) }
  }
  return (pid, ip) => {
    if (!maps.has(pid)) maps.set(pid, load(pid))
    const map = maps.get(pid)
    if (map === null || map === undefined || Number.isNaN(ip)) return undefined
    const { entries, longest } = map
    // the last entry starting at or before ip; then back over every entry that could reach ip
    let lo = 0
    let hi = entries.length - 1
    while (lo <= hi) {
      const mid = (lo + hi) >> 1
      if ((entries[mid] as Entry).start <= ip) lo = mid + 1
      else hi = mid - 1
    }
    let best: Entry | undefined
    for (let i = hi; i >= 0 && (entries[i] as Entry).start > ip - longest; i--) {
      const entry = entries[i] as Entry
      if (ip < entry.end && (best === undefined || entry.seq > best.seq)) best = entry
    }
    return best?.name
  }
}

/** a frame without the build's absolute path */
function short(frame: string): string {
  return frame.replace(/file:\/\/\/\S*?\/dist\//, '').replace(/file:\/\/\/\S*node_modules\//, 'node_modules/').slice(0, 110)
}

/** what a sample with no JavaScript frame was doing */
function nativeKind(frames: string[]): string {
  const all = frames.join(' ')
  const has = (...parts: string[]): boolean => parts.some((p) => all.includes(p))
  if (has('asm_sysvec_apic_timer_interrupt') || (has('handle_softirqs') && !has('do_syscall_64'))) return 'interrupts and softirqs'
  if (has('asm_exc_page_fault')) return 'page faults'
  if (has('v8::internal::Heap', 'Scavenge', 'MarkCompact', 'Marking', 'Sweeper')) return 'garbage collector'
  if (has('CompilationJob', 'OptimizingCompileDispatcher', 'v8::internal::compiler::')) return 'TurboFan compiling'
  if (has('TLSWrap') || /^_?aesni/.test(frames[0] ?? '')) return 'TLS (TLSWrap, AES-GCM)'
  if (has('uv__fs_work', 'uv__work')) return 'libuv thread pool'
  if (has('do_syscall_64')) return `system call ${frames.find((f) => f.startsWith('__x64_sys_')) ?? '?'}`
  return `other: ${frames[0] ?? '?'}`
}

function count(m: Map<string, number>, key: string): void {
  m.set(key, (m.get(key) ?? 0) + 1)
}

function print(title: string, m: Map<string, number>, unit: number, top: number): void {
  console.log(title)
  for (const [key, n] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${(n / unit).toFixed(2).padStart(6)}  ${key}`)
}

function main(): void {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string' }, under: { type: 'string' }, maps: { type: 'string' } } })
  const file = positionals[0]
  if (file === undefined) throw new Error('usage: perf-split.js FILE [--top 15] [--under NAME] [--maps DIR]')
  const top = Number(values.top ?? 15)
  const samples = parse(readFileSync(file, 'utf8'), values.maps === undefined ? undefined : mapResolver(values.maps))
  const unit = samples.filter((s) => s.frames[0]?.includes('sha256_block')).length
  if (unit === 0) throw new Error('no sha256 samples: nothing to measure against')
  const native = new Map<string, number>()
  const outermost = new Map<string, number>()
  const inclusive = new Map<string, number>()
  const tiers = new Map<string, number>()
  const packages = new Map<string, number>()
  const threads = new Map<string, number>()
  const under = new Map<string, number>()
  let libp2p = 0
  for (const { frames, main } of samples) {
    const js = frames.filter((f) => f.startsWith('JS:'))
    const kind = js.length === 0 ? nativeKind(frames) : 'JavaScript'
    if (main !== undefined) count(threads, `${main ? 'main thread' : 'other threads'}: ${kind.replace(/^other: .*/, 'other')}`)
    if (js.length === 0) {
      count(native, kind)
      continue
    }
    count(tiers, { '*': 'TurboFan (*)', '^': 'baseline (^)', '~': 'interpreter (~)' }[js[0]?.[3] ?? ''] ?? 'other (wasm, stubs)')
    const worker = [...js].reverse().find((f) => !PLUMBING.some((p) => f.includes(p))) ?? (js.at(-1) as string)
    count(outermost, short(worker))
    const owners = js.map((f) => owner(/(?:file:\/\/|node:)\S+?(?=:\d+:\d+$)/.exec(f)?.[0] ?? ''))
    for (const f of new Set(js.filter((_, i) => owners[i]?.startsWith('shoal:')).map(short))) count(inclusive, f)
    count(packages, owners.findLast((o) => o !== '' && !o.startsWith('node:')) ?? 'Node.js only')
    if (owners.some((o) => LIBP2P.test(o))) libp2p++
    if (values.under !== undefined) {
      const at = frames.findLastIndex((f) => f.includes(values.under as string))
      if (at >= 0) count(under, at === 0 ? '(itself)' : short(frames[at - 1] as string))
    }
  }
  const withJs = samples.length - [...native.values()].reduce((a, b) => a + b, 0)
  console.log(`${samples.length} samples; one unit = ${unit} samples in sha256; ${(samples.length / unit).toFixed(1)} units in all, ${(withJs / unit).toFixed(1)} with a JavaScript frame`)
  print('no JavaScript frame, by kind', native, unit, top)
  print('JavaScript, by the outermost frame past the event loop\'s plumbing', outermost, unit, top)
  print('Shoal functions, every sample they are on', inclusive, unit, top)
  print('tier of the innermost JavaScript frame', tiers, unit, top)
  print(`JavaScript, by the outermost package or Shoal module on the stack (a libp2p frame anywhere: ${(libp2p / unit).toFixed(2)})`, packages, unit, top)
  if (threads.size > 0) print('by thread (V8 helpers and libuv\'s pool are the other threads) and kind', threads, unit, top)
  if (values.under !== undefined) print(`called by the outermost ${values.under}`, under, unit, top)
}

main()
