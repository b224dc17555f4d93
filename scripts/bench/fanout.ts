/**
 * Fleet fan-out: a whole fleet pulls a new image at once (or spread over a window), through
 * Shoal on every node, against the same fleet pulling straight from origin.
 *
 * Builds N node namespaces and one origin namespace on a bridge with tbf caps on every link
 * (both ways), docker-registry as the origin with a generated image (random layers), Shoal in
 * each node namespace (bootstrapped to node 1 by its static address, one private swarm), and a
 * client per node: the light verifying puller (manifest + blobs through the node's own Shoal on
 * 127.0.0.1, sha256 of every blob while it streams) or containerd's ctr with a hosts.toml
 * mirror entry. It waits until every Shoal's /readyz says the swarm is joined, starts the pulls
 * and times each node from its own start to its last verified byte.
 *
 * Origin bytes come from the origin link's kernel tx counter (before/after), not from Shoal.
 * T_min = max(F/u_origin, F/d_node, N·F/(u_origin + Σu_nodes)). Prints a table per mode and per
 * node, then one JSON line (also to --json FILE), and writes the completion-time CDF of both
 * modes against T_min as SVG (--svg FILE). Everything is torn down at the end, also on failure
 * or a signal.
 *
 *   scripts/bench/fanout [--nodes 16] [--image-size 128MiB] [--layers 3] [--rate-mbit 50]
 *                        [--origin-rate-mbit R] [--spread 0] [--mode both|shoal|baseline]
 *                        [--client light|ctr] [--rounds 1] [--gap 30] [--json FILE] [--svg FILE] [--check]
 *
 * `--rounds R` runs R rounds per mode on the same fleet (the same daemons, joined once), each
 * pulling an image of its own (fresh random content), `--gap` seconds apart, and adds a median
 * row; the targets are checked against the medians. One round on this 2-core machine varies by
 * ±10% and more (p50 2.43-2.84x over eight runs of one code), which hides any single change of
 * that size.
 */
import { mkdtempSync, rmSync, writeFileSync, cpSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { type Client, FanoutFleet, type Mode, type NodeResult, type RoundResult } from './lib/fleet-fanout.js'
import { cdfSvg, fetcherSplit, type ModeSummary, medianSummary, nodeTable, summarise, summaryTable, tMinSeconds } from './lib/fleet-report.js'
import { DEFAULT_SHOAL_MAIN } from './lib/fleet-shoal.js'
import { LinkTrace } from './lib/link-trace.js'
import { formatBytes, parseSizeArg, round } from './lib/measure.js'

const MiB = 1024 ** 2
const REPO = 'bench/fanout'
const PROGRESS_MS = 15_000

/** the targets of the fan-out issue (16 nodes, 128 MiB, 50 Mbit/s, all at once) */
const TARGETS = { originOverImage: 1.1, p50OverTmin: 1.2, maxOverTmin: 1.5 } as const

interface Options {
  nodes: number
  imageSize: number
  layers: number
  rateMbit: number
  originRateMbit: number
  spread: number
  modes: Mode[]
  client: Client
  json: string | undefined
  svg: string | undefined
  check: boolean
  unpack: boolean
  logLevel: string
  shoalEnv: Record<string, string>
  nodeFlags: string[]
  daemon: string
  keep: string | undefined
  /** print every host's bytes per second and the TCP retransmissions after each round */
  links: boolean
  cold: boolean
  rounds: number
  gap: number
}

function positive(text: string | undefined, name: string, fallback: number, integer = false): number {
  if (text === undefined) return fallback
  const v = Number(text)
  if (!Number.isFinite(v) || v < 0 || (integer && !Number.isInteger(v))) throw new Error(`bad ${name} "${text}"`)
  return v
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      nodes: { type: 'string' },
      'image-size': { type: 'string' },
      layers: { type: 'string' },
      'rate-mbit': { type: 'string' },
      'origin-rate-mbit': { type: 'string' },
      spread: { type: 'string' },
      mode: { type: 'string' },
      client: { type: 'string' },
      json: { type: 'string' },
      svg: { type: 'string' },
      check: { type: 'boolean', default: false },
      unpack: { type: 'boolean', default: false },
      cold: { type: 'boolean', default: false },
      'log-level': { type: 'string' },
      'shoal-env': { type: 'string', multiple: true },
      'node-flags': { type: 'string' },
      daemon: { type: 'string' },
      keep: { type: 'string' },
      links: { type: 'boolean', default: false },
      profile: { type: 'string' },
      rounds: { type: 'string' },
      gap: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  })
  if (values.help) {
    process.stdout.write(
      [
        'Usage: scripts/bench/fanout [--nodes 16] [--image-size 128MiB] [--layers 3] [--rate-mbit 50]',
        '                            [--origin-rate-mbit R (default: --rate-mbit)] [--spread SECONDS (0: all at once)]',
        '                            [--mode both|shoal|baseline] [--client light|ctr] [--unpack]',
        '                            [--json FILE] [--svg FILE] [--check] [--log-level info] [--cold] [--rounds 1] [--gap 30]',
        '                            [--shoal-env SHOAL_KEY=VALUE | DEBUG=NAMESPACES | NODE_OPTIONS=… | GLIBC_TUNABLES=…]... [--daemon PATH/TO/dist/src/cli/main.js] [--node-flags=FLAGS] [--keep DIR] [--profile DIR] [--links]',
        '  --client light  a verifying puller (manifest + blobs, sha256 while streaming) per node; ctr: containerd\'s ctr',
        '  --unpack        with --client ctr: `ctr images pull` (fetch and unpack) instead of `ctr content fetch`',
        '  --check         exit 3 when a target of the fan-out issue is missed (shoal mode)',
        '  --links         after each round, the machine\'s busy share and every host\'s MB/s in and out second by',
        '                  second (its bridge port\'s counters, sampled every 250 ms; origin too), the TCP segments retransmitted,',
        '                  and the round against its mid-round rate (what its ramp and tail took)',
        '  --cold          start the Shoal round once every daemon joined, without waiting (up to 60 s) until',
        '                  the routing tables settle (hold the whole fleet, or stop growing for 5 s)',
        '  --rounds R      R rounds per mode on one fleet, each with an image of its own, and their medians',
        '  --gap S         seconds between rounds (default 30; the last round\'s announces, spread over p2p.announceSpread, may still go out)',
        '  --node-flags=F  flags for node in every daemon, before its script (e.g. \'--node-flags=--trace-gc --min-semi-space-size=16\':',
        '                  V8 flags NODE_OPTIONS refuses; --trace-gc lines go to the daemon logs, which fanout-logs counts)',
        '  --keep DIR      copy the logs (Shoal, origin, agents) to DIR at the end',
        '  --profile DIR   write a V8 CPU profile of every daemon to DIR (read it with scripts/bench/profile-summary)',
        '',
      ].join('\n'),
    )
    process.exit(0)
  }
  const nodes = positive(values.nodes, '--nodes', 16, true)
  const rounds = positive(values.rounds, '--rounds', 1, true)
  if (rounds < 1) throw new Error('--rounds must be at least 1')
  if (nodes < 1 || nodes > 200) throw new Error('--nodes must be 1..200')
  const layers = positive(values.layers, '--layers', 3, true)
  if (layers < 1) throw new Error('--layers must be at least 1')
  const rateMbit = positive(values['rate-mbit'], '--rate-mbit', 50)
  if (rateMbit <= 0) throw new Error('--rate-mbit must be positive')
  const mode = values.mode ?? 'both'
  if (!['both', 'shoal', 'baseline'].includes(mode)) throw new Error(`bad --mode "${mode}"`)
  const client = values.client ?? 'light'
  if (client !== 'light' && client !== 'ctr') throw new Error(`bad --client "${client}"`)
  const shoalEnv: Record<string, string> = {}
  for (const kv of values['shoal-env'] ?? []) {
    const eq = kv.indexOf('=')
    // SHOAL_ settings, DEBUG for libp2p's own debug log (into the daemons' logs that --keep
    // keeps), NODE_OPTIONS for V8 flags Node allows there (e.g. --max-semi-space-size) or an
    // --import preload, and GLIBC_TUNABLES for the C library's allocator
    if (eq < 1 || !(kv.startsWith('SHOAL_') || kv.startsWith('DEBUG=') || kv.startsWith('NODE_OPTIONS=') || kv.startsWith('GLIBC_TUNABLES='))) {
      throw new Error(`bad --shoal-env "${kv}" (SHOAL_KEY=VALUE, DEBUG=…, NODE_OPTIONS=… or GLIBC_TUNABLES=…)`)
    }
    shoalEnv[kv.slice(0, eq)] = kv.slice(eq + 1)
  }
  if (values.profile !== undefined) {
    shoalEnv.NODE_OPTIONS = `--import ${pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), 'lib', 'profile-hook.js')).href}`
    shoalEnv.BENCH_PROFILE_DIR = resolve(values.profile)
  }
  return {
    nodes,
    imageSize: values['image-size'] === undefined ? 128 * MiB : parseSizeArg(values['image-size']),
    layers,
    rateMbit,
    originRateMbit: positive(values['origin-rate-mbit'], '--origin-rate-mbit', rateMbit),
    spread: positive(values.spread, '--spread', 0),
    modes: mode === 'both' ? ['baseline', 'shoal'] : [mode as Mode],
    client,
    json: values.json,
    svg: values.svg,
    check: values.check === true,
    unpack: values.unpack === true,
    logLevel: values['log-level'] ?? 'info',
    shoalEnv,
    nodeFlags: (values['node-flags'] ?? '').split(/\s+/).filter((f) => f !== ''),
    daemon: resolve(values.daemon ?? DEFAULT_SHOAL_MAIN),
    keep: values.keep,
    links: values.links === true,
    cold: values.cold === true,
    rounds,
    gap: positive(values.gap, '--gap', 30),
  }
}

/** a round's summary (or a mode's medians over its rounds) in the JSON report */
function summaryJson(s: ModeSummary) {
  return {
    p50Seconds: round(s.p50, 4),
    p90Seconds: round(s.p90, 4),
    maxSeconds: round(s.max, 4),
    p50OverTmin: round(s.p50OverTmin, 4),
    p90OverTmin: round(s.p90OverTmin, 4),
    maxOverTmin: round(s.maxOverTmin, 4),
    originOverImage: round(s.originOverImage, 4),
    completed: s.completed,
    failed: s.failed,
    cpuBusySeconds: round(s.cpuBusySeconds, 2),
    cpuUtilisation: round(s.cpuUtilisation, 3),
    shoalCpuSecondsPerGB: round(s.shoalCpuPerGB, 2),
    clientCpuSecondsPerGB: round(s.clientCpuPerGB, 2),
  }
}

/** the image bytes the round's clients received, MiB */
function receivedMiB(r: RoundResult): number {
  return r.nodes.reduce((a, n) => a + n.bytes, 0) / 2 ** 20
}

/** one round in the JSON report: its summary, and what only a round has */
function roundJson(r: RoundResult, s: ModeSummary) {
  return {
    ...summaryJson(s),
    originTxBytes: r.originTxBytes,
    originTxBytesAtLastFinish: r.originTxBytesAtLastFinish,
    wallSeconds: round(r.wallSeconds, 3),
    machineCpuSeconds: Object.fromEntries(Object.entries(r.cpu.machine).map(([k, v]) => [k, round(v, 2)])),
    shoalCpuSeconds: round(r.cpu.shoalSeconds, 2),
    shoalSystemCpuSeconds: round(r.cpu.shoalSystemSeconds, 2),
    shoalMinorFaults: r.cpu.shoalMinorFaults,
    shoalSwitches: r.cpu.shoalSwitches,
    clientCpuSeconds: round(r.cpu.clientSeconds, 2),
    originCpuSeconds: round(r.cpu.originSeconds, 2),
    nodes: r.nodes.map((n) => ({ ...n, seconds: round(n.seconds, 4) })),
  }
}

/** node i starts at spread·i/(N-1) seconds (node 1 first) */
function offsets(nodes: number, spreadSeconds: number): number[] {
  return Array.from({ length: nodes }, (_, i) => (nodes < 2 ? 0 : Math.round((spreadSeconds * 1000 * i) / (nodes - 1))))
}

function say(line: string): void {
  process.stderr.write(`${line}\n`)
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2))
  if (process.getuid?.() !== 0) throw new Error('this benchmark builds network namespaces: run it as root')
  const work = mkdtempSync(join(tmpdir(), 'shoal-bench-fanout-'))
  const removeWork = (): void => rmSync(work, { recursive: true, force: true })
  process.on('exit', removeWork)
  let ff: FanoutFleet | undefined
  const rounds: RoundResult[] = []
  /** per round, its summary (labelled `<mode> i/R` when there are several rounds) */
  const summaries: ModeSummary[] = []
  /** per mode, what the targets go by: its one round, or the medians of its rounds */
  const byMode: ModeSummary[] = []
  const loadAtStart = loadavg()
  try {
    ff = await FanoutFleet.create({
      nodes: opts.nodes,
      rateMbit: opts.rateMbit,
      originRateMbit: opts.originRateMbit,
      images: Array.from({ length: opts.rounds }, (_, i) => ({ name: REPO, tag: `v${i + 1}`, layers: opts.layers, bytes: opts.imageSize })),
      work,
      clients: [opts.client],
      shoalMain: opts.daemon,
      snapshot: true,
      logLevel: opts.logLevel,
      shoalEnv: opts.shoalEnv,
      shoalNodeFlags: opts.nodeFlags,
      ctrUnpack: opts.unpack,
      cold: opts.cold,
      log: say,
    })
    const images = ff.origin.images
    const image = images[0]!
    const tMin = tMinSeconds({ nodes: opts.nodes, imageBytes: image.bytes, originUpMbit: opts.originRateMbit, nodeDownMbit: opts.rateMbit, nodeUpMbit: opts.rateMbit })
    say(`image ${formatBytes(image.bytes)} in ${image.blobs.length} blobs (config + ${opts.layers} layers); T_min = ${tMin.toFixed(2)} s`)
    let joinSeconds: number | undefined
    let settled: { seconds: number; smallest: number } | undefined
    for (const mode of opts.modes) {
      if (mode === 'shoal') ({ joinSeconds, settled } = await ff.startShoal())
      const mine: ModeSummary[] = []
      for (const [i, roundImage] of images.entries()) {
        if (i > 0) {
          say(`${mode}: next round in ${opts.gap} s`)
          await sleep(opts.gap * 1000)
        }
        const label = images.length > 1 ? `${mode} ${i + 1}/${images.length}` : mode
        say(`${label}: ${opts.nodes} nodes pulling${opts.spread > 0 ? `, starts spread over ${opts.spread} s` : ' at once'}…`)
        const fleet = ff
        const trace = opts.links ? await LinkTrace.start(ff.fleet) : undefined
        let roundStart = 0
        const r = await ff.round({
          mode,
          image: roundImage,
          offsetsMs: offsets(opts.nodes, opts.spread),
          // a progress line every PROGRESS_MS while the round runs
          during: async ({ start, done, finished }) => {
            roundStart = start
            const following = trace?.follow(done)
            const tx0 = await fleet.origin.txBytes()
            while (!done()) {
              const next = Date.now() + PROGRESS_MS
              while (!done() && Date.now() < next) await sleep(250)
              if (done()) break
              const sent = (await fleet.origin.txBytes().catch(() => tx0)) - tx0
              say(`  ${label}: ${((Date.now() - start) / 1000).toFixed(0)} s, ${finished()}/${opts.nodes} nodes done, origin sent ${(sent / roundImage.bytes).toFixed(2)}× the image so far`)
            }
            await following
          },
        })
        rounds.push(r)
        const s = { ...summarise(r, tMin), mode: label }
        summaries.push(s)
        mine.push(s)
        say(`${label}: done in ${r.wallSeconds.toFixed(1)} s; p50 ${s.p50.toFixed(2)} s, max ${s.max.toFixed(2)} s, origin sent ${s.originOverImage.toFixed(3)}× the image`)
        process.stdout.write(`\n${label}: per node\n${nodeTable(r)}\n`)
        if (trace !== undefined) process.stdout.write(`\n${label}: links, from the round's start\n${await trace.report(roundStart)}\n`)
      }
      byMode.push(mine.length > 1 ? medianSummary(mine, `${mode} median`) : (mine[0] as ModeSummary))
      if (mode === 'shoal') await ff.stopShoal()
    }

    process.stdout.write(
      `\nfan-out: ${opts.nodes} nodes, ${formatBytes(image.bytes)} image in ${opts.layers} layers, links ${opts.rateMbit} Mbit/s` +
        ` (origin ${opts.originRateMbit} Mbit/s), both ways; ${opts.spread > 0 ? `starts spread over ${opts.spread} s` : 'all at once'}; client ${opts.client}\n` +
        `${summaryTable(images.length > 1 ? [...summaries, ...byMode] : summaries)}\n`,
    )
    const shoal = byMode.find((s) => s.mode.startsWith('shoal'))
    const checks =
      shoal === undefined
        ? []
        : [
            { name: 'origin sent ÷ image', value: shoal.originOverImage, target: TARGETS.originOverImage },
            ...(opts.spread > 0
              ? []
              : [
                  { name: 'p50 ÷ T_min', value: shoal.p50OverTmin, target: TARGETS.p50OverTmin },
                  { name: 'max ÷ T_min', value: shoal.maxOverTmin, target: TARGETS.maxOverTmin },
                ]),
            { name: 'every node completed and verified', value: shoal.failed.length, target: 0 },
          ].map((c) => ({ ...c, ok: Number.isFinite(c.value) && c.value <= c.target }))
    if (checks.length > 0) {
      process.stdout.write(`\ntargets (shoal mode): ${checks.map((c) => `${c.name} ${round(c.value, 3)} ≤ ${c.target} ${c.ok ? 'ok' : 'MISSED'}`).join('; ')}\n`)
    }
    for (const [i, r] of rounds.entries()) {
      const m = r.cpu.machine
      process.stdout.write(`${summaries[i]?.mode}: machine CPU s during the round: user ${m.user.toFixed(1)}, system ${m.system.toFixed(1)}, softirq ${m.softirq.toFixed(1)}, irq ${m.irq.toFixed(1)}\n`)
      if (r.mode === 'shoal') {
        process.stdout.write(
          `${summaries[i]?.mode}: the daemons' CPU s: ${r.cpu.shoalSeconds.toFixed(1)}, of it system ${r.cpu.shoalSystemSeconds.toFixed(1)}; fresh memory (minor faults) per daemon: ${((r.cpu.shoalMinorFaults * 4) / 1024 / Math.max(1, r.nodes.length)).toFixed(0)} MiB; context switches per MiB received: ${(r.cpu.shoalSwitches / Math.max(1, receivedMiB(r))).toFixed(0)}\n`,
        )
        // chunk bytes the peers sent, against those the downloads accepted: the rest was cut off or thrown away
        const sum = (pick: (c: NonNullable<NodeResult['shoal']>) => number): number => r.nodes.reduce((a, n) => a + (n.shoal === undefined ? 0 : pick(n.shoal)), 0)
        const sent = sum((c) => c.bytesToPeers)
        const accepted = sum((c) => c.bytesFromPeers)
        const vain = accepted > 0 ? `, ${((100 * (sent - accepted)) / accepted).toFixed(1)}% more sent than accepted` : ''
        process.stdout.write(`${summaries[i]?.mode}: peers sent ${formatBytes(sent)}, downloads accepted ${formatBytes(accepted)}${vain}\n`)
        process.stdout.write(`${summaries[i]?.mode}: ${fetcherSplit(r, tMin)}\n`)
      }
    }
    for (const s of summaries) for (const fl of s.failed) process.stdout.write(`${s.mode}: ${fl.name} failed: ${fl.error}\n`)

    if (opts.svg !== undefined) {
      const svg = cdfSvg(
        rounds.map((r, i) => {
          const ok = r.nodes.filter((n) => n.ok && n.verified && n.killed !== true)
          const s = summaries[i] as ModeSummary
          return {
            label:
              `${r.mode === 'shoal' ? 'Shoal fan-out' : 'baseline: straight from origin'}${images.length > 1 ? ` ${s.mode.split(' ')[1]}` : ''} (p50 ${s.p50OverTmin.toFixed(2)}× T_min, origin ${s.originOverImage.toFixed(2)}× image` +
              `${ok.length < r.nodes.length ? `; ${ok.length}/${r.nodes.length} nodes completed` : ''})`,
            seconds: ok.map((n) => n.seconds),
            total: r.nodes.length,
            color: r.mode === 'shoal' ? '#d62728' : '#1f6fb4',
          }
        }),
        tMin,
        `${opts.nodes} nodes pull ${formatBytes(image.bytes)} (${opts.layers} layers), ${opts.rateMbit} Mbit/s links${opts.spread > 0 ? `, starts over ${opts.spread} s` : ', all at once'}`,
      )
      writeFileSync(opts.svg, svg)
      say(`CDF plot: ${opts.svg}`)
    }

    const report = {
      bench: 'shoal-fanout',
      time: new Date().toISOString(),
      node: process.version,
      daemon: opts.daemon,
      params: {
        nodes: opts.nodes,
        imageSizeRequested: opts.imageSize,
        layers: opts.layers,
        rateMbit: opts.rateMbit,
        originRateMbit: opts.originRateMbit,
        spreadSeconds: opts.spread,
        client: opts.client,
        unpack: opts.unpack,
        shoalEnv: opts.shoalEnv,
        nodeFlags: opts.nodeFlags,
        cold: opts.cold,
      },
      image: { bytes: image.bytes, digest: image.digest, blobs: image.blobs },
      tMinSeconds: round(tMin, 4),
      joinSeconds: joinSeconds === undefined ? undefined : round(joinSeconds, 3),
      // the wait for the routing tables to settle (part of joinSeconds), and the smallest table when the round began
      settled: settled === undefined ? undefined : { seconds: round(settled.seconds, 3), smallestTable: settled.smallest },
      // per mode: its round, or (several rounds) the medians and every round
      modes: Object.fromEntries(
        opts.modes.map((mode) => {
          const mine = rounds.flatMap((r, i) => (r.mode === mode ? [roundJson(r, summaries[i] as ModeSummary)] : []))
          const median = byMode.find((b) => b.mode.split(' ')[0] === mode) as ModeSummary
          return [mode, mine.length === 1 ? mine[0] : { median: summaryJson(median), rounds: mine }]
        }),
      ),
      checks,
      loadAverageAtStart: loadAtStart.map((v) => round(v, 2)),
      loadAverageAtEnd: loadavg().map((v) => round(v, 2)),
    }
    const line = JSON.stringify(report)
    process.stdout.write(`\n${line}\n`)
    if (opts.json !== undefined) writeFileSync(opts.json, `${line}\n`)
    if (opts.check && checks.some((c) => !c.ok)) process.exitCode = 3
  } finally {
    await ff?.teardown()
    if (opts.keep !== undefined) {
      try {
        cpSync(work, opts.keep, { recursive: true, filter: (src) => !/\/(origin-storage|shoal-build)(\/|$)|\/shoal-n\d+(\/|$)/.test(src) })
        say(`logs kept in ${opts.keep}`)
      } catch (err) {
        say(`could not keep logs: ${(err as Error).message}`)
      }
    }
    removeWork()
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench/fanout: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
