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
 * the tier of the innermost JavaScript frame (`*` TurboFan, `^` baseline, `~` interpreter); and
 * with `--under NAME`, what the outermost frame matching NAME called, by samples.
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

/** the event loop's and Node's dispatching frames, passed over to find who did the work */
const PLUMBING = ['processTicksAndRejections', 'processTimers', 'listOnTimeout', 'onStreamRead', 'emit node', 'runMicrotasks', 'emitReadable_']

/**
 * samples (each its frames, innermost first) of `perf script -F tid,ip,sym` output: a frame's
 * line starts with a tab, a sample's header does not (perf pads the tid with spaces)
 */
function parse(text: string): string[][] {
  const samples: string[][] = []
  let current: string[] | undefined
  for (const line of text.split('\n')) {
    if (line.trim() === '') {
      if (current !== undefined) samples.push(current)
      current = undefined
    } else if (!line.startsWith('\t')) {
      if (current !== undefined) samples.push(current)
      current = []
    } else current?.push(line.trim().split(/\s+/).slice(1).join(' ') || '?')
  }
  if (current !== undefined) samples.push(current)
  return samples
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
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string' }, under: { type: 'string' } } })
  const file = positionals[0]
  if (file === undefined) throw new Error('usage: perf-split.js FILE [--top 15] [--under NAME]')
  const top = Number(values.top ?? 15)
  const samples = parse(readFileSync(file, 'utf8'))
  const unit = samples.filter((s) => s[0]?.includes('sha256_block')).length
  if (unit === 0) throw new Error('no sha256 samples: nothing to measure against')
  const native = new Map<string, number>()
  const outermost = new Map<string, number>()
  const inclusive = new Map<string, number>()
  const tiers = new Map<string, number>()
  const under = new Map<string, number>()
  for (const frames of samples) {
    const js = frames.filter((f) => f.startsWith('JS:'))
    if (js.length === 0) {
      count(native, nativeKind(frames))
      continue
    }
    count(tiers, { '*': 'TurboFan (*)', '^': 'baseline (^)', '~': 'interpreter (~)' }[js[0]?.[3] ?? ''] ?? 'other (wasm, stubs)')
    const worker = [...js].reverse().find((f) => !PLUMBING.some((p) => f.includes(p))) ?? (js.at(-1) as string)
    count(outermost, short(worker))
    for (const f of new Set(js.filter((f) => f.includes('/dist/src/')).map(short))) count(inclusive, f)
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
  if (values.under !== undefined) print(`called by the outermost ${values.under}`, under, unit, top)
}

main()
