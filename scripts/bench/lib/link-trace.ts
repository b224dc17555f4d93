/**
 * What a fan-out fleet's links carried during a round (the bench's `--links`): each host's bytes
 * in and out, second by second, from its bridge port's counters (`ip -n BRIDGE -s -j link`,
 * every SAMPLE_MS; the port sends what the host receives), the machine's busy share (`/proc/stat`:
 * every process on it, the kernel's shaping included), and the TCP segments the hosts sent and
 * retransmitted over the round (each namespace's `/proc/net/snmp`).
 */
import { ORIGIN } from './fleet-fanout.js'
import { rampSummary } from './fleet-report.js'
import { machineCpuTimes } from './measure.js'
import { type Fleet, run } from './netns.js'

const SAMPLE_MS = 250

interface PortBytes {
  /** bytes the host received (the port's tx) and sent (the port's rx) */
  in: number
  out: number
}

interface Sample {
  at: number
  ports: Map<string, PortBytes>
  /** the machine's CPU seconds, busy and in all */
  cpu: { busy: number; total: number }
}

export class LinkTrace {
  private readonly samples: Sample[] = []
  private readonly fleet: Fleet
  private readonly tcpAtStart: { out: number; retrans: number }

  private constructor(fleet: Fleet, tcpAtStart: { out: number; retrans: number }) {
    this.fleet = fleet
    this.tcpAtStart = tcpAtStart
  }

  static async start(fleet: Fleet): Promise<LinkTrace> {
    return new LinkTrace(fleet, await tcpSegments(fleet))
  }

  /** samples the bridge ports until `done` */
  async follow(done: () => boolean): Promise<void> {
    while (!done()) {
      const ports = await portBytes(this.fleet.bridgeNs)
      const { busy, total } = machineCpuTimes()
      this.samples.push({ at: Date.now(), ports, cpu: { busy, total } })
      await new Promise((resolve) => setTimeout(resolve, SAMPLE_MS))
    }
  }

  /** the machine's busy share and MB/s in and out of every host for each second from `start` (ms since epoch), and the TCP retransmissions since `start()` */
  async report(start: number): Promise<string> {
    const hosts = this.fleet.hosts
    const at = (t: number): Sample | undefined => this.samples.findLast((s) => s.at <= t) ?? this.samples[0]
    const rows = [`  s  busy  ${hosts.map((h) => `${h.name} in/out`).join('  ')}  (MB/s)`]
    /** MB/s all the nodes (not origin) received, by second */
    const received: number[] = []
    const last = this.samples.at(-1)?.at ?? start
    for (let second = 0; start + (second + 1) * 1000 <= last; second++) {
      const a = at(start + second * 1000)
      const b = at(start + (second + 1) * 1000)
      if (a === undefined || b === undefined || b.at <= a.at) continue
      const rate = (h: (typeof hosts)[number], dir: keyof PortBytes): number =>
        ((b.ports.get(h.bridgePort)?.[dir] ?? 0) - (a.ports.get(h.bridgePort)?.[dir] ?? 0)) / 1e3 / (b.at - a.at)
      const busy = (100 * (b.cpu.busy - a.cpu.busy)) / Math.max(1e-9, b.cpu.total - a.cpu.total)
      received.push(hosts.filter((h) => h.name !== ORIGIN).reduce((sum, h) => sum + rate(h, 'in'), 0))
      rows.push(`${String(second).padStart(3)}  ${`${busy.toFixed(0)}%`.padStart(4)}  ${hosts.map((h) => `${rate(h, 'in').toFixed(2)}/${rate(h, 'out').toFixed(2)}`).join('  ')}`)
    }
    const tcp = await tcpSegments(this.fleet)
    const out = tcp.out - this.tcpAtStart.out
    const retrans = tcp.retrans - this.tcpAtStart.retrans
    rows.push(`TCP segments the hosts sent: ${out}, retransmitted: ${retrans} (${((100 * retrans) / Math.max(1, out)).toFixed(1)}%)`)
    rows.push(rampSummary(received))
    return rows.join('\n')
  }
}

async function portBytes(bridgeNs: string): Promise<Map<string, PortBytes>> {
  const { stdout } = await run('ip', ['-n', bridgeNs, '-s', '-j', 'link'])
  const ports = new Map<string, PortBytes>()
  for (const link of JSON.parse(stdout) as { ifname: string; stats64?: { rx: { bytes: number }; tx: { bytes: number } } }[]) {
    if (link.stats64 !== undefined) ports.set(link.ifname, { in: link.stats64.tx.bytes, out: link.stats64.rx.bytes })
  }
  return ports
}

/** TCP segments sent and retransmitted, summed over the fleet's hosts */
async function tcpSegments(fleet: Fleet): Promise<{ out: number; retrans: number }> {
  let out = 0
  let retrans = 0
  for (const host of fleet.hosts) {
    const { stdout } = await run('ip', ['netns', 'exec', host.ns, 'cat', '/proc/net/snmp'])
    const [names, values] = stdout.split('\n').filter((l) => l.startsWith('Tcp:')).map((l) => l.split(/\s+/))
    const field = (name: string): number => Number(values?.[names?.indexOf(name) ?? -1] ?? 0)
    out += field('OutSegs')
    retrans += field('RetransSegs')
  }
  return { out, retrans }
}
