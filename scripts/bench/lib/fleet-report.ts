/**
 * Fan-out figures: the fluid lower bound T_min, completion percentiles and their ratios to it,
 * origin bytes over image bytes, a readable table, and an SVG plot of the completion-time CDF.
 */
import { formatTable } from './measure.js'
import type { RoundResult } from './fleet-fanout.js'

export interface LinkModel {
  nodes: number
  /** bytes of the image (every blob plus the manifest) */
  imageBytes: number
  originUpMbit: number
  nodeDownMbit: number
  nodeUpMbit: number
}

/**
 * T_min = max(F/u_origin, F/d_node, N·F/(u_origin + Σu_nodes)), seconds: no node can finish before
 * the image crossed the origin's uplink once and its own downlink once, and the fleet cannot
 * receive N·F faster than the sum of every uplink can send.
 */
export function tMinSeconds(m: LinkModel): number {
  const bps = (mbit: number): number => (mbit * 1e6) / 8
  const F = m.imageBytes
  return Math.max(F / bps(m.originUpMbit), F / bps(m.nodeDownMbit), (m.nodes * F) / (bps(m.originUpMbit) + m.nodes * bps(m.nodeUpMbit)))
}

/** linear interpolation between closest ranks (R type 7); NaN for no values */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const s = [...values].sort((a, b) => a - b)
  const h = (s.length - 1) * p
  const lo = Math.floor(h)
  const hi = Math.ceil(h)
  return s[lo]! + (s[hi]! - s[lo]!) * (h - lo)
}

export interface ModeSummary {
  mode: string
  nodes: number
  /** nodes that completed with verified bytes (killed nodes left out) */
  completed: number
  failed: { name: string; error: string }[]
  killed: string[]
  p50: number
  p90: number
  max: number
  tMin: number
  p50OverTmin: number
  p90OverTmin: number
  maxOverTmin: number
  originTxBytes: number
  originOverImage: number
  wallSeconds: number
  cpuBusySeconds: number
  cpuUtilisation: number
  /** CPU seconds of all Shoal daemons per GB the clients received */
  shoalCpuPerGB: number
  clientCpuPerGB: number
}

export function summarise(round: RoundResult, tMin: number): ModeSummary {
  const alive = round.nodes.filter((n) => n.killed !== true)
  const good = alive.filter((n) => n.ok && n.verified)
  const times = good.map((n) => n.seconds)
  const p50 = percentile(times, 0.5)
  const p90 = percentile(times, 0.9)
  const max = times.length === 0 ? Number.NaN : Math.max(...times)
  return {
    mode: round.mode,
    nodes: round.nodes.length,
    completed: good.length,
    failed: alive.filter((n) => !(n.ok && n.verified)).map((n) => ({ name: n.name, error: n.error ?? 'not verified' })),
    killed: round.nodes.filter((n) => n.killed === true).map((n) => n.name),
    p50,
    p90,
    max,
    tMin,
    p50OverTmin: p50 / tMin,
    p90OverTmin: p90 / tMin,
    maxOverTmin: max / tMin,
    originTxBytes: round.originTxBytes,
    originOverImage: round.originTxBytes / round.image.bytes,
    wallSeconds: round.wallSeconds,
    cpuBusySeconds: round.cpu.busySeconds,
    cpuUtilisation: round.cpu.utilisation,
    shoalCpuPerGB: round.cpu.shoalSeconds / (delivered(round) / 1e9),
    clientCpuPerGB: round.cpu.clientSeconds / (delivered(round) / 1e9),
  }
}

/** the figures a median row takes the median of */
const MEDIAN_FIELDS = [
  'p50',
  'p90',
  'max',
  'p50OverTmin',
  'p90OverTmin',
  'maxOverTmin',
  'originTxBytes',
  'originOverImage',
  'wallSeconds',
  'cpuBusySeconds',
  'cpuUtilisation',
  'shoalCpuPerGB',
  'clientCpuPerGB',
] as const satisfies readonly (keyof ModeSummary)[]

/** a node that took more than this from origin in a Shoal round was one of its origin fetchers */
const FETCHER_ORIGIN_BYTES = 1_000_000

/**
 * A Shoal round's completion times split by role: the nodes that took more than 1 MB from origin
 * (the blobs' origin fetchers; the config blob's fetcher takes a few hundred bytes) against the
 * rest, each as median and max over T_min. A fetcher that serves its fresh chunks to the whole
 * fleet may finish last, which the fleet's p50 alone does not show. Killed and failed nodes are
 * left out.
 */
export function fetcherSplit(round: RoundResult, tMin: number): string {
  const done = round.nodes.filter((n) => n.ok && n.verified && n.killed !== true)
  const part = (label: string, nodes: typeof done): string => {
    const over = nodes.map((n) => n.seconds / tMin)
    return nodes.length === 0 ? `${label} 0` : `${label} ${nodes.length}, median ${percentile(over, 0.5).toFixed(2)}× max ${Math.max(...over).toFixed(2)}×`
  }
  const fetchers = done.filter((n) => n.originBlobBytes > FETCHER_ORIGIN_BYTES)
  const others = done.filter((n) => n.originBlobBytes <= FETCHER_ORIGIN_BYTES)
  return `completion ÷ T_min: ${part('origin fetchers (over 1 MB from origin)', fetchers)}; ${part('the others', others)}`
}

/**
 * A round's time against its mid-round rate, from the bytes all the nodes received in each of
 * its seconds (MB/s, from the round's start to its last sample): the rate over the middle half
 * of those seconds, the first second that reached 80% of it (the end of the ramp), and how long
 * all the bytes would have taken at that rate. The rest of the round went to its ramp and its
 * tail; the mid-round rate is what the links, or the machine's CPU, allowed.
 */
export function rampSummary(received: readonly number[]): string {
  if (received.length < 4) return 'the nodes\' received bytes: too few seconds to tell a ramp from a middle'
  const from = Math.floor(received.length / 4)
  const to = Math.ceil((3 * received.length) / 4) // exclusive
  const middle = received.slice(from, to)
  const rate = middle.reduce((a, b) => a + b, 0) / middle.length
  const total = received.reduce((a, b) => a + b, 0)
  const rampEnd = received.findIndex((r) => r >= 0.8 * rate)
  return (
    `the nodes received ${total.toFixed(0)} MB, ${rate.toFixed(1)} MB/s over the middle half of the round (seconds ${from}–${to - 1}), ` +
    `80% of that first in second ${rampEnd}; at that rate the bytes take ${(total / rate).toFixed(1)} s of the round's ${received.length}`
  )
}

/**
 * The median of several rounds of one mode, field by field (each figure its own median, so the
 * row need not be one round's); `failed` and `killed` gather every round's, `completed` is the
 * fewest. Labelled `label`.
 */
export function medianSummary(rounds: readonly ModeSummary[], label: string): ModeSummary {
  const first = rounds[0]
  if (first === undefined) throw new Error('medianSummary: no rounds')
  const medians = Object.fromEntries(MEDIAN_FIELDS.map((k) => [k, percentile(rounds.map((s) => s[k]), 0.5)]))
  return {
    ...first,
    ...medians,
    mode: label,
    completed: Math.min(...rounds.map((s) => s.completed)),
    failed: rounds.flatMap((s) => s.failed),
    killed: rounds.flatMap((s) => s.killed),
  }
}

/** bytes the clients received and verified */
function delivered(round: RoundResult): number {
  return round.nodes.reduce((a, n) => a + (n.ok && n.verified ? n.bytes : 0), 0)
}

const f = (n: number, d = 2): string => (Number.isFinite(n) ? n.toFixed(d) : 'n/a')

export function summaryTable(summaries: readonly ModeSummary[]): string {
  return formatTable([
    ['mode', 'done', 'p50 s', 'p90 s', 'max s', 'T_min s', 'p50/T_min', 'p90/T_min', 'max/T_min', 'origin sent ÷ image', 'machine CPU busy', 'Shoal CPU s/GB', 'client CPU s/GB'],
    ...summaries.map((s) => [
      s.mode,
      `${s.completed}/${s.nodes - s.killed.length}`,
      f(s.p50),
      f(s.p90),
      f(s.max),
      f(s.tMin),
      `${f(s.p50OverTmin)}×`,
      `${f(s.p90OverTmin)}×`,
      `${f(s.maxOverTmin)}×`,
      `${f(s.originOverImage, 3)}×`,
      `${f(s.cpuUtilisation * 100, 0)}%`,
      s.mode.startsWith('shoal') ? f(s.shoalCpuPerGB, 1) : '-',
      f(s.clientCpuPerGB, 1),
    ]),
  ])
}

export function nodeTable(round: RoundResult): string {
  const MB = 1e6
  const shoal = round.mode === 'shoal'
  const head = ['node', 'client', 'start s', 'seconds', 'result', 'origin→node MB (log)']
  if (shoal) head.push('client→origin MB', 'Shoal from origin MB', 'from peers MB', 'to peers MB', 'peers')
  const rows = round.nodes.map((n) => {
    const row = [
      n.name,
      n.client,
      f(n.offsetMs / 1000, 1),
      f(n.seconds),
      n.killed === true ? 'killed' : n.ok && n.verified ? 'ok' : `FAILED: ${(n.error ?? '').slice(0, 60)}`,
      f(n.originBlobBytes / MB, 1),
    ]
    if (shoal) {
      row.push(
        f(n.directBlobBytes / MB, 1),
        n.shoal === undefined ? '-' : f(n.shoal.originBytes / MB, 1),
        n.shoal === undefined ? '-' : f(n.shoal.peerBytes / MB, 1),
        n.shoal === undefined ? '-' : f(n.shoal.bytesToPeers / MB, 1),
        n.shoal === undefined ? '-' : String(n.shoal.connectedPeers),
      )
    }
    return row
  })
  return formatTable([head, ...rows])
}

// ---- SVG: completion-time CDF --------------------------------------------------------------

export interface CdfSeries {
  label: string
  /** completion seconds of the nodes that completed */
  seconds: number[]
  /** nodes in the run (the CDF tops out at completed/total) */
  total: number
  color?: string
}

const COLORS = ['#1f6fb4', '#d62728', '#2ca02c', '#9467bd']

/**
 * The completion-time CDF of each series on a log time axis (fan-out and baseline differ by an
 * order of magnitude), with a vertical line at T_min.
 */
export function cdfSvg(series: readonly CdfSeries[], tMin: number, title: string): string {
  const W = 820
  const L = 70
  const R = 20
  const T = 48
  const B = 64 + 20 * series.length
  const H = 420 + B
  const all = series.flatMap((s) => s.seconds).filter((v) => Number.isFinite(v) && v > 0)
  const lo = Math.min(tMin * 0.5, ...all.map((v) => v * 0.8))
  const hi = Math.max(tMin * 2, ...all.map((v) => v * 1.25))
  const x = (s: number): number => L + ((Math.log(s) - Math.log(lo)) / (Math.log(hi) - Math.log(lo))) * (W - L - R)
  const y = (frac: number): number => H - B - frac * (H - T - B)
  const out: string[] = []
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`)
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`)
  out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="14">${esc(title)}</text>`)
  // grid and ticks
  for (const t of logTicks(lo, hi)) {
    out.push(`<line x1="${x(t).toFixed(1)}" y1="${y(0)}" x2="${x(t).toFixed(1)}" y2="${y(1)}" stroke="#e4e4e4"/>`)
    out.push(`<text x="${x(t).toFixed(1)}" y="${y(0) + 16}" text-anchor="middle">${t}</text>`)
  }
  for (let k = 0; k <= 4; k++) {
    const frac = k / 4
    out.push(`<line x1="${L}" y1="${y(frac)}" x2="${W - R}" y2="${y(frac)}" stroke="#e4e4e4"/>`)
    out.push(`<text x="${L - 6}" y="${y(frac) + 4}" text-anchor="end">${frac * 100}%</text>`)
  }
  out.push(`<line x1="${L}" y1="${y(0)}" x2="${W - R}" y2="${y(0)}" stroke="black"/>`)
  out.push(`<line x1="${L}" y1="${y(0)}" x2="${L}" y2="${y(1)}" stroke="black"/>`)
  out.push(`<text x="${(L + W - R) / 2}" y="${y(0) + 36}" text-anchor="middle">completion time per node, seconds (log scale)</text>`)
  out.push(`<text x="18" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 18 ${(T + H - B) / 2})">nodes done</text>`)
  // T_min
  out.push(`<line x1="${x(tMin).toFixed(1)}" y1="${y(0)}" x2="${x(tMin).toFixed(1)}" y2="${y(1) - 6}" stroke="black" stroke-dasharray="5 4"/>`)
  out.push(`<text x="${(x(tMin) + 4).toFixed(1)}" y="${y(1) - 10}">T_min = ${tMin.toFixed(1)} s</text>`)
  // series
  series.forEach((s, i) => {
    const color = s.color ?? COLORS[i % COLORS.length]!
    const sorted = [...s.seconds].filter((v) => Number.isFinite(v) && v > 0).sort((a, b) => a - b)
    const pts: string[] = [`M${x(lo).toFixed(1)},${y(0).toFixed(1)}`]
    sorted.forEach((t, k) => {
      pts.push(`H${x(t).toFixed(1)}`, `V${y((k + 1) / s.total).toFixed(1)}`)
    })
    pts.push(`H${x(hi).toFixed(1)}`)
    out.push(`<path d="${pts.join(' ')}" fill="none" stroke="${color}" stroke-width="2"/>`)
    const ly = y(0) + 62 + i * 20
    out.push(`<line x1="${L + 12}" y1="${ly}" x2="${L + 40}" y2="${ly}" stroke="${color}" stroke-width="2"/>`)
    out.push(`<text x="${L + 46}" y="${ly + 4}">${esc(s.label)}</text>`)
  })
  out.push('</svg>')
  return `${out.join('\n')}\n`
}

function logTicks(lo: number, hi: number): number[] {
  const ticks: number[] = []
  for (let e = Math.floor(Math.log10(lo)) - 1; e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e
      if (v >= lo && v <= hi) ticks.push(Number(v.toPrecision(3)))
    }
  }
  return ticks
}

function esc(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}
