/**
 * What the DHT's work costs in CPU: N nodes in one process on loopback (node 1 first, the others
 * bootstrapped from it, kad-dht's K as the daemon's default), then, one operation at a time, the
 * process's CPU (user + system, both ends of every request: they are all in this process) per
 * operation:
 * - baseline: a bare libp2p request on the same connections (a stream of the bench's own
 *   protocol, 300 bytes each way, closed), what any request over libp2p costs;
 * - a providers walk to its end (`lookup` of a blob one node announced);
 * - an announce that walks (`advertise` of a blob no walk ran for: kad-dht's provide);
 * - an announce to the peers a closest-peers query just found (`advertise` right after
 *   `closest`: the record goes straight to them, see NEAR_KNOWN_MS in src/routing/dht.ts).
 * Each is printed as CPU ms per operation, its median over `--rounds` batches of `--ops`
 * operations, and as a ratio to the baseline's median (per baseline request). Wall time is
 * printed for scale only: every node shares this one event loop.
 *
 *   npm run build && node dist/scripts/bench/dht-cost.js [--nodes 16] [--ops 32] [--rounds 3] [--k 8]
 */
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { pino } from 'pino'
import { type PeerNode, createPeerNode } from '../../src/p2p/node.js'
import { waitFor } from '../../test/helpers/proc.js'
import { median, selfCpuSeconds } from './lib/measure.js'

const ECHO_PROTOCOL = '/shoal-bench/echo/1.0.0'
const REQUEST = new Uint8Array(300).fill(7)

const { values } = parseArgs({
  options: { nodes: { type: 'string' }, ops: { type: 'string' }, rounds: { type: 'string' }, k: { type: 'string' } },
})
const nodesWanted = Number(values.nodes ?? 16)
const ops = Number(values.ops ?? 32)
const rounds = Number(values.rounds ?? 3)
const k = Number(values.k ?? 8)
if (![nodesWanted, ops, rounds, k].every((v) => Number.isInteger(v) && v > 0) || nodesWanted < 3) throw new Error('bad --nodes (3 or more), --ops, --rounds or --k')

const logger = pino({ level: 'silent' })
const digestOf = (text: string): string => `sha256:${createHash('sha256').update(text).digest('hex')}`

const cpuMs = (): number => selfCpuSeconds() * 1000

/**
 * CPU ms and wall ms per operation over `ops` operations run one after the other (`prepare` for
 * each first, all of them, not counted: a receiver's work after an operation returned falls in
 * the next one's window, so nothing else runs between them)
 */
async function measure(op: (i: number) => Promise<unknown>, prepare?: (i: number) => Promise<unknown>): Promise<{ cpu: number; wall: number }> {
  if (prepare !== undefined) {
    for (let i = 0; i < ops; i++) await prepare(i)
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
  const cpu = cpuMs()
  const wall = performance.now()
  for (let i = 0; i < ops; i++) await op(i)
  return { cpu: (cpuMs() - cpu) / ops, wall: (performance.now() - wall) / ops }
}

const root = await mkdtemp(path.join(tmpdir(), 'shoal-dht-cost-'))
const nodes: PeerNode[] = []
try {
  const start = (i: number, bootstrap: string[]): Promise<PeerNode> =>
    createPeerNode({
      dataDir: path.join(root, `n${i}`),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap,
      logger,
      routing: { kBucketSize: k },
      bootstrapRetry: { minDelayMs: 100, maxDelayMs: 1_000 },
    })
  nodes.push(await start(0, []))
  const seed = nodes[0]?.status().listenAddrs[0] as string
  nodes.push(...(await Promise.all(Array.from({ length: nodesWanted - 1 }, (_, i) => start(i + 1, [seed])))))
  await waitFor('every node to join', () => nodes.every((n) => n.router.ready()), { timeoutMs: 30_000 })
  // the tables fill as the nodes' self-queries run: every node knows every other, or 10 s passed
  await waitFor('full routing tables', () => nodes.every((n) => n.status().routingTableSize >= nodesWanted - 1), { timeoutMs: 10_000 }).catch(() => {})
  for (const node of nodes) {
    await node.libp2p.handle(
      ECHO_PROTOCOL,
      async (stream) => {
        for await (const chunk of stream) {
          stream.send(chunk.subarray())
          break
        }
        await stream.close()
      },
      { maxInboundStreams: 256 },
    )
  }
  const node = (i: number): PeerNode => nodes[i % nodes.length] as PeerNode
  // warm-up: each node's first query waits for its self-query; and the code paths get compiled
  await Promise.allSettled(nodes.map((n, i) => n.router.advertise(digestOf(`warm-up ${i}`))))
  const request = async (i: number): Promise<void> => {
    const from = node(i)
    const to = node(i + 1 + (i % (nodes.length - 1)))
    const stream = await from.libp2p.dialProtocol(to.libp2p.peerId, ECHO_PROTOCOL)
    stream.send(REQUEST)
    await stream.close()
    for await (const _ of stream) {
      // the echo, then the end of the stream
    }
  }
  for (let i = 0; i < ops; i++) await request(i)

  const results = { baseline: [] as number[], walk: [] as number[], walked: [] as number[], near: [] as number[] }
  const walls = { baseline: [] as number[], walk: [] as number[], walked: [] as number[], near: [] as number[] }
  const tables = nodes.map((n) => n.status().routingTableSize)
  for (let round = 0; round < rounds; round++) {
    const tag = `round ${round}`
    const near = (i: number): string => digestOf(`${tag} near ${i}`)
    const batches: [keyof typeof results, (i: number) => Promise<unknown>, ((i: number) => Promise<unknown>)?][] = [
      ['baseline', request],
      ['walked', (i) => node(i).router.advertise(digestOf(`${tag} walked ${i}`))],
      // a blob another node announced (above), looked up to the walk's end
      [
        'walk',
        async (i) => {
          for await (const _ of node(i + 3).router.lookup(digestOf(`${tag} walked ${i}`), { limit: nodes.length, timeoutMs: 5_000 })) {
            // to the end of the walk
          }
        },
      ],
      // the closest-peers queries before them (walks) not counted
      ['near', (i) => node(i).router.advertise(near(i)), (i) => node(i).router.closest(near(i), { timeoutMs: 5_000 })],
    ]
    for (const [name, op, prepare] of batches) {
      const { cpu, wall } = await measure(op, prepare)
      results[name].push(cpu)
      walls[name].push(wall)
    }
  }
  const base = median(results.baseline)
  const label = {
    baseline: 'bare libp2p request (baseline)',
    walk: 'providers walk to its end',
    walked: 'announce, walking (provide)',
    near: 'announce to the near peers found',
  }
  console.log(`${nodes.length} nodes in one process, K = ${k}, routing tables ${Math.min(...tables)}-${Math.max(...tables)} of ${nodes.length - 1} peers; ${rounds} rounds of ${ops} operations each, one at a time`)
  for (const name of ['baseline', 'walk', 'walked', 'near'] as const) {
    const perOp = median(results[name])
    console.log(
      `  ${label[name].padEnd(34)} ${perOp.toFixed(2).padStart(7)} CPU ms per operation (${results[name].map((v) => v.toFixed(2)).join(', ')})` +
        `  ${(perOp / base).toFixed(1).padStart(5)}× the baseline   wall ${median(walls[name]).toFixed(1)} ms`,
    )
  }
} finally {
  await Promise.allSettled(nodes.map((n) => n.stop()))
  await rm(root, { recursive: true, force: true })
}
process.exit(0)
