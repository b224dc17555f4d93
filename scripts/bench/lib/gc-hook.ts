/**
 * Garbage collections of a Shoal daemon, for benches: loaded with `node --import` through
 * NODE_OPTIONS, it counts every collection of the daemon's life by kind (a PerformanceObserver
 * on 'gc' entries) and, at exit, appends one JSON line to the file BENCH_GC_LOG names:
 *   {"pid":…,"cpuSeconds":…,"scavenges":…,"markCompacts":…,"pauseMs":…}
 * Only `shoal daemon` processes report. For example, the peer-transfer daemon path:
 *   npm run build && NODE_OPTIONS="--import $PWD/dist/scripts/bench/lib/gc-hook.js" \
 *     BENCH_GC_LOG=/tmp/gc.jsonl node dist/scripts/bench/peer-transfer.js --size 1GiB --rounds 3 --seeders 1 --daemon-only
 * (the seeders are the two longest-lived daemons; every round's puller is a daemon of its own).
 */
import { appendFileSync } from 'node:fs'
import { constants, type PerformanceEntry, PerformanceObserver } from 'node:perf_hooks'

const file = process.env.BENCH_GC_LOG
if (file !== undefined && process.argv.includes('daemon')) {
  let scavenges = 0
  let markCompacts = 0
  let pauseMs = 0
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = (entry as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) scavenges++
      // (an incremental marking reports as a step of its own besides the major collection it ends in)
      else if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) markCompacts++
      pauseMs += entry.duration
    }
  }).observe({ entryTypes: ['gc'] })
  process.on('exit', () => {
    const cpu = process.cpuUsage()
    const line = { pid: process.pid, cpuSeconds: (cpu.user + cpu.system) / 1e6, scavenges, markCompacts, pauseMs: Math.round(pauseMs) }
    appendFileSync(file, `${JSON.stringify(line)}\n`)
  })
}
