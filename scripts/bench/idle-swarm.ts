/**
 * Background CPU of a joined swarm with nothing to do: N daemons on loopback (node 1 first, the
 * others bootstrapped from it), left alone for `--settle` seconds, then their CPU seconds
 * (from /proc) over `--window` seconds. What a fleet pays for just being a swarm (libp2p
 * keep-alives, DHT upkeep) and what a fan-out pays on top of moving bytes.
 *
 *   npm run build && node dist/scripts/bench/idle-swarm.js [--nodes 16] [--settle 60] [--window 30]
 */
import { parseArgs } from 'node:util'
import { startFleet } from '../../test/helpers/swarm.js'
import { processCpuSeconds } from './lib/measure.js'

const { values } = parseArgs({
  options: { nodes: { type: 'string' }, settle: { type: 'string' }, window: { type: 'string' } },
})
const nodes = Number(values.nodes ?? 16)
const settleS = Number(values.settle ?? 60)
const windowS = Number(values.window ?? 30)
if (![nodes, settleS, windowS].every((v) => Number.isFinite(v) && v > 0)) throw new Error('bad --nodes, --settle or --window')

const fleet = await startFleet(nodes)
try {
  const pids = fleet.nodes.map((n) => n.proc.pid).filter((pid): pid is number => pid !== undefined)
  process.stderr.write(`${pids.length} daemons joined; settling ${settleS} s…\n`)
  await new Promise((resolve) => setTimeout(resolve, settleS * 1000))
  const before = pids.map(processCpuSeconds)
  await new Promise((resolve) => setTimeout(resolve, windowS * 1000))
  const spent = pids.reduce((sum, pid, i) => sum + processCpuSeconds(pid) - (before[i] as number), 0)
  process.stdout.write(
    `idle swarm of ${pids.length}: ${spent.toFixed(2)} CPU-s over ${windowS} s = ${(spent / windowS).toFixed(3)} cores, ` +
      `${((spent / windowS / pids.length) * 1000).toFixed(1)} millicores per daemon\n`,
  )
} finally {
  await fleet.close()
}
process.exit(0)
