/**
 * A V8 CPU profile of a Shoal daemon, for benches: loaded with `node --import` (the fan-out
 * bench's `--profile DIR` sets NODE_OPTIONS for its daemons), it profiles from start to exit
 * and writes DIR/<pid>.cpuprofile (DIR from BENCH_PROFILE_DIR). Only `shoal daemon` processes
 * are profiled. Read the profiles with scripts/bench/profile-summary.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { Session } from 'node:inspector'
import { join } from 'node:path'

const dir = process.env.BENCH_PROFILE_DIR
if (dir !== undefined && process.argv.includes('daemon')) {
  const session = new Session()
  session.connect()
  session.post('Profiler.enable')
  // a coarse interval (BENCH_PROFILE_INTERVAL_US, default 10 ms) keeps the profiler's own cost
  // low: at V8's 1 ms default, a profiled 16-node fan-out took twice as long as one without
  session.post('Profiler.setSamplingInterval', { interval: Number(process.env.BENCH_PROFILE_INTERVAL_US ?? 10_000) })
  session.post('Profiler.start')
  // the in-process session answers synchronously, so this runs to the end inside 'exit'
  process.on('exit', () => {
    session.post('Profiler.stop', (err, result) => {
      if (err !== null) return
      mkdirSync(dir, { recursive: true })
      writeFileSync(join(dir, `${process.pid}.cpuprofile`), JSON.stringify(result.profile))
    })
  })
}
