/**
 * Counts from the daemon logs a fan-out run kept (`scripts/bench/fanout --mode shoal --keep DIR
 * --json F`), split at the round's start (the first client's `startedAt` in F):
 * - `infoAnswered` and `infoBytes`: holdings answers and their bytes, summed over the `peer data server closed` lines;
 * - chunk reads of swarm downloads served from memory and from the file, and the median peak
 *   of the chunks held ahead of the prefix, over the blobs of 1 MiB or more (`blob fetched
 *   through the swarm` lines, every round);
 * - origin fetchers (chosen during the round): for each blob, how many nodes chose each pair (`origin fetchers chosen`),
 *   and how many took candidates from the near nodes their fetchers named (`near` > 0); and the
 *   median time from a blob's request to its fetchers' answers (`ms`) over all those lines;
 * - V8 collections (`--node-flags=--trace-gc`): the daemons' scavenges and mark-compacts, and
 *   with `--trace-incremental-marking` in the flags too, the incremental markings started, by
 *   reason, over the daemons' whole lives (the trace has no wall-clock time);
 * - announces (`advertised`, a debug line: run with `--log-level debug`): how many walked;
 * - origin's blob answers per second of the round, by node (`origin.log`, origin's access log:
 *   a line as origin finishes writing an answer; the time has whole seconds);
 * - kad-dht requests received, by type (`--shoal-env DEBUG=libp2p:kad-dht:rpc`);
 * - protocol streams negotiated and connections closed with a GoAway before the last node
 *   finished (`--shoal-env 'DEBUG=libp2p:*,-libp2p:kad-dht:*'`; each side logs a stream once),
 *   and the kad-dht streams among them per 10 s from the round's start.
 *
 * With several rounds (`--rounds R`), ROUND (1 by default) picks the round whose window is used;
 * the holdings answers, counted when the daemons stop, are those of every round.
 *
 *   npm run build && node dist/scripts/bench/fanout-logs.js DIR F [ROUND]
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { median } from './lib/measure.js'

interface RoundJson {
  nodes: { name: string; addr: string; startedAt: number; seconds: number }[]
}
interface RunJson {
  /** one round, or the rounds of a `--rounds` run */
  modes: { shoal?: RoundJson | { rounds: RoundJson[] } }
}

function increment(m: Map<string, number>, key: string, by = 1): void {
  m.set(key, (m.get(key) ?? 0) + by)
}

function print(title: string, m: Map<string, number>): void {
  const total = [...m.values()].reduce((a, b) => a + b, 0)
  console.log(`${title}: ${total}`)
  for (const [key, n] of [...m].sort((a, b) => b[1] - a[1])) console.log(`  ${String(n).padStart(7)}  ${key}`)
}

function main(): void {
  const [dir, jsonFile, roundArg = '1'] = process.argv.slice(2)
  if (dir === undefined || jsonFile === undefined) throw new Error('usage: fanout-logs DIR F [ROUND]')
  const shoal = (JSON.parse(readFileSync(jsonFile, 'utf8')) as RunJson).modes.shoal
  const picked = shoal !== undefined && 'rounds' in shoal ? shoal.rounds[Number(roundArg) - 1] : shoal
  const nodes = picked?.nodes ?? []
  if (nodes.length === 0) throw new Error(`${jsonFile} has no shoal-mode nodes`)
  const start = Math.min(...nodes.map((n) => n.startedAt))
  const end = Math.max(...nodes.map((n) => n.startedAt + n.seconds * 1000))
  let infoAnswered = 0
  let infoBytes = 0
  const reads = { memory: 0, file: 0 }
  const heldPeaks: number[] = []
  const fetchers = new Map<string, Map<string, number>>()
  /** per blob, the nodes that added candidates from the near nodes named by the fetchers they asked */
  const tookNear = new Map<string, number>()
  const announces = new Map<string, number>()
  const kadBefore = new Map<string, number>()
  const kadDuring = new Map<string, number>()
  const streams = new Map<string, number>()
  /** kad-dht streams negotiated, by 10 s window from the round's start (its first second) */
  const kadStreams = new Map<number, number>()
  const fetcherMs: number[] = []
  const collections = new Map<string, number>()
  let goAways = 0
  // (a round's choices end with its last node, but the window keeps the rounds of a `--rounds` run apart)
  const inRound = (at: number): boolean => at >= start && at <= end
  for (const file of readdirSync(dir).filter((f) => /^shoal-.*\.log$/.test(f))) {
    for (const line of readFileSync(join(dir, file), 'utf8').split('\n')) {
      if (line.startsWith('{')) {
        let entry: {
          msg?: string
          time?: string
          infoAnswered?: number
          infoBytes?: number
          digest?: string
          fetchers?: string[]
          near?: number
          ms?: number
          walked?: boolean
          peers?: number
          size?: number
          reads?: { memory: number; file: number }
          heldPeakBytes?: number
        }
        try {
          entry = JSON.parse(line) as typeof entry
        } catch {
          continue
        }
        if (entry.msg === 'peer data server closed') {
          infoAnswered += entry.infoAnswered ?? 0
          infoBytes += entry.infoBytes ?? 0
        } else if (entry.msg === 'blob fetched through the swarm' && (entry.size ?? 0) >= 2 ** 20 && entry.reads !== undefined) {
          reads.memory += entry.reads.memory
          reads.file += entry.reads.file
          if (entry.heldPeakBytes !== undefined) heldPeaks.push(entry.heldPeakBytes)
        } else if (entry.msg === 'origin fetchers chosen' && entry.digest !== undefined && inRound(Date.parse(entry.time ?? ''))) {
          const byPair = fetchers.get(entry.digest) ?? new Map<string, number>()
          increment(byPair, (entry.fetchers ?? []).map((id) => id.slice(-6)).join('+'))
          fetchers.set(entry.digest, byPair)
          if ((entry.near ?? 0) > 0) increment(tookNear, entry.digest)
          if (entry.ms !== undefined) fetcherMs.push(entry.ms)
        } else if (entry.msg === 'advertised') increment(announces, `${entry.walked === true ? 'walked' : 'to the near peers, no walk'}, stored on ${entry.peers} peers`)
        continue
      }
      // --trace-gc: `[pid:0x…]  1234 ms: Scavenge …` and `[IncrementalMarking] Start (reason)`
      const gc = /^\[\d+:0x[0-9a-f]+\]\s+\d+ ms: (?:(Scavenge|Mark-Compact) |\[IncrementalMarking\] Start \(([^)]*)\))/.exec(line)
      if (gc !== null) {
        increment(collections, gc[1] ?? `incremental marking started: ${gc[2]}`)
        continue
      }
      // libp2p's debug lines: `<ISO time> <namespace> <message>`
      const debug = /^(\d{4}-\d\d-\d\dT\S+Z) (\S+) (.*)$/.exec(line)
      if (debug === null) continue
      const at = Date.parse(debug[1] as string)
      const text = debug[3] as string
      const kad = /^incoming (\S+) from/.exec(text)
      if (kad !== null && (debug[2] as string).endsWith('kad-dht:rpc')) increment(at < start ? kadBefore : kadDuring, kad[1] as string)
      const negotiated = /negotiated protocol (\S+)/.exec(text)
      if (negotiated !== null && at >= start) {
        increment(streams, negotiated[1] as string)
        if ((negotiated[1] as string).includes('/kad/')) {
          const window = Math.floor((at - start) / 10_000) * 10
          kadStreams.set(window, (kadStreams.get(window) ?? 0) + 1)
        }
      }
      if (text.startsWith('sending GoAway') && at >= start && at < end) goAways++
    }
  }
  console.log(`info answers: ${infoAnswered}, ${(infoBytes / 2 ** 20).toFixed(1)} MiB`)
  if (reads.memory + reads.file > 0) {
    const share = (100 * reads.memory) / (reads.memory + reads.file)
    const held = heldPeaks.length === 0 ? '' : `; held ahead of the prefix, median peak per blob: ${(median(heldPeaks) / 2 ** 20).toFixed(0)} MiB`
    console.log(`chunk reads from memory: ${reads.memory} of ${reads.memory + reads.file} (${share.toFixed(0)}%)${held}`)
  }
  printOriginAnswers(dir, nodes, start, end)
  console.log('origin fetchers chosen, nodes per pair (last 6 characters of each peer id), and nodes that added near nodes to their candidates:')
  for (const [digest, byPair] of fetchers) {
    console.log(`  ${digest.slice(0, 19)}  ${[...byPair.values()].sort((a, b) => b - a).join('/')}  (${tookNear.get(digest) ?? 0} took near nodes)`)
  }
  if (fetcherMs.length > 0) console.log(`  median from a blob's request to its fetchers' answers: ${median(fetcherMs)} ms (${fetcherMs.length} choices)`)
  if (collections.size > 0) print('V8 collections (--trace-gc), the daemons\' whole lives', collections)
  print('announces', announces)
  print('kad-dht requests received before the round', kadBefore)
  print('kad-dht requests received during the round', kadDuring)
  print('protocol streams negotiated during the round (both sides log one)', streams)
  const windows = [...kadStreams].sort((a, b) => a[0] - b[0]).map(([from, n]) => `${from}-${from + 10} s: ${n}`)
  console.log(`kad-dht streams per 10 s from the round's start (both sides): ${windows.length > 0 ? windows.join(', ') : 'none logged'}`)
  console.log(`connections closed (GoAway) before the last node finished: ${goAways}`)
}

/** origin's blob answers (200 and 206) per second from the round's start to its end, one column per node */
function printOriginAnswers(dir: string, nodes: RoundJson['nodes'], start: number, end: number): void {
  let text: string
  try {
    text = readFileSync(join(dir, 'origin.log'), 'utf8')
  } catch {
    return
  }
  const perSecond = new Map<number, Map<string, number>>()
  // `198.18.0.2 - - [29/Nov/2026:19:25:31 +0000] "GET /v2/…/blobs/sha256:… HTTP/1.1" 206 1048576 …`
  const re = /^(\S+) \S+ \S+ \[(\d+)\/(\w+)\/(\d+):(\d+):(\d+):(\d+) \+0000\] "GET \S+\/blobs\/\S+ HTTP\/[\d.]+" 20[06] /
  for (const line of text.split('\n')) {
    const m = re.exec(line)
    if (m === null) continue
    const at = Date.parse(`${m[2]} ${m[3]} ${m[4]} ${m[5]}:${m[6]}:${m[7]} UTC`)
    if (at < Math.floor(start / 1000) * 1000 || at > end) continue
    const second = Math.floor((at - start) / 1000)
    const row = perSecond.get(second) ?? new Map<string, number>()
    increment(row, m[1] as string)
    perSecond.set(second, row)
  }
  if (perSecond.size === 0) return
  console.log(`origin's blob answers per second of the round (origin.log), by node: ${nodes.map((n) => n.name).join(' ')}`)
  const last = Math.max(...perSecond.keys())
  for (let second = Math.min(0, ...perSecond.keys()); second <= last; second++) {
    const row = perSecond.get(second)
    console.log(`  ${String(second).padStart(3)} s  ${nodes.map((n) => String(row?.get(n.addr) ?? 0).padStart(n.name.length)).join(' ')}`)
  }
}

main()
