/**
 * Where the CPU went in a set of V8 CPU profiles (the fan-out bench's `--profile DIR`): the
 * samples of every profile, optionally only those taken `--after-ms` after each profile began
 * (the bench's JSON has `joinSeconds`: pass it ×1000 to leave joining out) and before
 * `--before-ms`, grouped six ways: by the owner of the stack (any libp2p frame on it, else the
 * outermost Shoal module, else Node), by the package of the running function, by function,
 * (libp2p stacks only) by the outermost libp2p frame, by every Shoal function on the stack
 * (inclusive: a function's time counts what it called), and by every package on the stack
 * (inclusive too). V8's sampler counts wall time while JS
 * runs, so on an oversubscribed machine read the shares loosely; `--counts` weighs every sample
 * alike instead of by the time since the one before (a process that waited for a core long
 * gives its next sample a large weight). `--windows MS` adds libp2p's share of each MS-long
 * window after `--after-ms`.
 *
 *   npm run build && node dist/scripts/bench/profile-summary.js DIR [--after-ms N] [--before-ms M] [--top 20] [--counts] [--windows MS]
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { LIBP2P, owner } from './lib/owners.js'

interface CallFrame {
  functionName: string
  url: string
}
interface ProfileNode {
  id: number
  callFrame: CallFrame
  children?: number[]
}
interface Profile {
  nodes: ProfileNode[]
  startTime: number
  samples: number[]
  timeDeltas: number[]
}

function add(m: Map<string, number>, key: string, ms: number): void {
  m.set(key, (m.get(key) ?? 0) + ms)
}

function main(): void {
  const { values, positionals } = parseArgs({
    options: {
      'after-ms': { type: 'string' },
      'before-ms': { type: 'string' },
      top: { type: 'string' },
      counts: { type: 'boolean' },
      windows: { type: 'string' },
    },
    allowPositionals: true,
  })
  const dir = positionals[0]
  if (dir === undefined) throw new Error('usage: profile-summary DIR [--after-ms N] [--before-ms M] [--top 20] [--counts] [--windows MS]')
  const afterMs = Number(values['after-ms'] ?? 0)
  const beforeMs = Number(values['before-ms'] ?? Number.POSITIVE_INFINITY)
  const top = Number(values.top ?? 20)
  const counts = values.counts === true
  const windowMs = Number(values.windows ?? 0)
  const byStack = new Map<string, number>()
  const byPackage = new Map<string, number>()
  const byFunction = new Map<string, number>()
  const byLibp2pEntry = new Map<string, number>()
  const byShoalFunction = new Map<string, number>()
  const byPackageOnStack = new Map<string, number>()
  /** window index → [all, libp2p] */
  const windows = new Map<number, [number, number]>()
  let total = 0
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'))
  for (const file of files) {
    const profile = JSON.parse(readFileSync(join(dir, file), 'utf8')) as Profile
    const nodes = new Map(profile.nodes.map((n) => [n.id, n]))
    const parent = new Map<number, number>()
    for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
    let t = profile.startTime
    for (let i = 0; i < profile.samples.length; i++) {
      t += profile.timeDeltas[i] as number
      const ms = counts ? 1 : (profile.timeDeltas[i + 1] ?? 0) / 1000
      const node = nodes.get(profile.samples[i] as number)
      const at = (t - profile.startTime) / 1000
      if (node === undefined || node.callFrame.functionName === '(idle)' || at < afterMs || at >= beforeMs) continue
      total += ms
      const pkg = node.callFrame.url === '' ? node.callFrame.functionName : owner(node.callFrame.url)
      add(byPackage, pkg, ms)
      add(byFunction, `${pkg} ${node.callFrame.functionName || '(anonymous)'}`, ms)
      const owners: string[] = []
      const shoalFunctions = new Set<string>()
      // the outermost libp2p frame: what libp2p was doing (a handshake, identify, a DHT query…)
      let libp2pEntry: string | undefined
      for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
        const frame = nodes.get(id)?.callFrame
        const o = owner(frame?.url ?? '')
        if (o === '') continue
        owners.push(o)
        if (LIBP2P.test(o)) libp2pEntry = `${o} ${frame?.functionName || '(anonymous)'}`
        if (o.startsWith('shoal:')) shoalFunctions.add(`${o} ${frame?.functionName || '(anonymous)'}`)
      }
      if (libp2pEntry !== undefined) add(byLibp2pEntry, libp2pEntry, ms)
      for (const o of new Set(owners)) add(byPackageOnStack, o, ms)
      for (const f of shoalFunctions) add(byShoalFunction, f, ms)
      if (windowMs > 0) {
        const w = Math.floor((at - afterMs) / windowMs)
        const counted = windows.get(w) ?? [0, 0]
        counted[0] += ms
        if (libp2pEntry !== undefined) counted[1] += ms
        windows.set(w, counted)
      }
      const shoal = owners.filter((o) => o.startsWith('shoal:'))
      const stack = owners.some((o) => LIBP2P.test(o))
        ? 'libp2p'
        : shoal.length > 0
          ? (shoal.at(-1) as string)
          : owners.length > 0
            ? `node only: ${owners.at(-1)}`
            : node.callFrame.functionName
      add(byStack, stack, ms)
    }
  }
  const amount = (v: number): string => (counts ? `${v} samples` : `${(v / 1000).toFixed(1)} s`)
  const show = (title: string, m: Map<string, number>): void => {
    console.log(`\n${title}`)
    for (const [key, ms] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      console.log(`${amount(ms).padStart(15)} ${((100 * ms) / total).toFixed(1).padStart(5)}%  ${key}`)
    }
  }
  const window = `${afterMs > 0 ? ` after ${afterMs} ms` : ''}${Number.isFinite(beforeMs) ? ` before ${beforeMs} ms` : ''}`
  console.log(`${files.length} profiles, ${counts ? `${total} samples` : `${(total / 1000).toFixed(1)} s of samples`}${window}`)
  show('by stack owner (libp2p anywhere on the stack, else the outermost Shoal module)', byStack)
  show('by package of the running function', byPackage)
  show('by package anywhere on the stack (inclusive: a sample counts once for each package on it)', byPackageOnStack)
  show('by function', byFunction)
  show('libp2p stacks by their outermost libp2p frame', byLibp2pEntry)
  show('Shoal functions, inclusive (what they called counts)', byShoalFunction)
  if (windowMs > 0) {
    console.log(`\nlibp2p's share of each ${windowMs} ms window`)
    for (const [w, [all, libp2p]] of [...windows].sort((a, b) => a[0] - b[0])) {
      console.log(`${String(w * windowMs).padStart(9)} ms  ${amount(all).padStart(15)}  ${((100 * libp2p) / Math.max(1, all)).toFixed(0).padStart(3)}%`)
    }
  }
}

main()
