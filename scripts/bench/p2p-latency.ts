/**
 * Advertise and lookup latency of the kad-dht ContentRouter: N nodes in one
 * process on loopback, bootstrapped from node 1. Prints medians (and p90)
 * per variant, K=20 (the default) against K=5.
 *
 *   npx tsc -p tsconfig.json && node dist/scripts/bench/p2p-latency.js [nodes=10] [rounds=30]
 *
 * One process hosts every node, so the figures include the event loop
 * contention of N libp2p stacks on the machine's cores: compare variants
 * within one run, not against other machines.
 */
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { pino } from 'pino'
import { type PeerNode, createPeerNode } from '../../src/p2p/node.js'

const NODES = Number(process.argv[2] ?? 10)
const ROUNDS = Number(process.argv[3] ?? 30)
const logger = pino({ level: process.env['SHOAL_BENCH_LOG'] ?? 'silent' })

interface Variant {
  name: string
  kBucketSize?: number
}

const VARIANTS: Variant[] = [{ name: 'K=20 (default)' }, { name: 'K=5', kBucketSize: 5 }]

function digestOf(data: string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

function quantile(values: number[], q: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
}

function fmt(values: number[]): string {
  return `median ${quantile(values, 0.5).toFixed(1).padStart(7)} ms   p90 ${quantile(values, 0.9).toFixed(1).padStart(7)} ms   (n=${values.length})`
}

async function waitFor(predicate: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return true
}

async function timeLookup(node: PeerNode, digest: string, wanted: string, limit: number): Promise<{ first: number; done: number; hit: boolean }> {
  const started = performance.now()
  let first = Number.NaN
  let hit = false
  for await (const ref of node.router.lookup(digest, { limit, timeoutMs: 5_000 })) {
    if (ref.id === wanted && !hit) {
      hit = true
      first = performance.now() - started
    }
  }
  return { first, done: performance.now() - started, hit }
}

async function runVariant(variant: Variant, root: string): Promise<void> {
  const nodes: PeerNode[] = []
  const start = async (i: number, bootstrap: string[]): Promise<PeerNode> =>
    createPeerNode({
      dataDir: path.join(root, `${variant.kBucketSize ?? 20}-${i}`),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap,
      logger,
      routing: variant.kBucketSize === undefined ? {} : { kBucketSize: variant.kBucketSize },
      bootstrapRetry: { minDelayMs: 100, maxDelayMs: 1_000 }
    })
  try {
    const joinStarted = performance.now()
    const first = await start(0, [])
    nodes.push(first)
    const seed = first.status().listenAddrs[0]!
    nodes.push(...(await Promise.all(Array.from({ length: NODES - 1 }, (_, i) => start(i + 1, [seed])))))
    const joined = await waitFor(() => nodes.every((n) => n.router.ready()), 15_000)
    const joinMs = performance.now() - joinStarted
    // let self-queries fill the tables (every query waits for the first one anyway)
    await waitFor(() => nodes.every((n) => n.status().routingTableSize >= Math.min(NODES - 1, 2)), 5_000)
    const tables = nodes.map((n) => n.status().routingTableSize)

    // warm-up: the first query on each node waits for its initial self-query
    await Promise.allSettled(nodes.map((n, i) => n.router.advertise(digestOf(`${variant.name} warm-up ${i}`))))

    const advertise: number[] = []
    const lookupFirst: number[] = []
    const lookupOne: number[] = []
    const lookupAll: number[] = []
    let misses = 0
    for (let round = 0; round < ROUNDS; round++) {
      // every provider, and every reader at every distance from it
      const providerIndex = round % NODES
      const provider = nodes[providerIndex]!
      const reader = nodes[(providerIndex + 1 + (round % (NODES - 1))) % NODES]!
      const digest = digestOf(`${variant.name} blob ${round}`)
      const started = performance.now()
      await provider.router.advertise(digest)
      advertise.push(performance.now() - started)
      // limit 1: stops at the first provider
      const one = await timeLookup(reader, digest, provider.peerId, 1)
      if (one.hit) lookupFirst.push(one.first)
      else misses++
      lookupOne.push(one.done)
      // default limit 8 with a single provider: the query runs to its end
      const all = await timeLookup(reader, digest, provider.peerId, 8)
      lookupAll.push(all.done)
      if (!all.hit) misses++
    }

    // everyone at once: every node advertises its own blob, then every node looks up a neighbour's
    const digests = nodes.map((_, i) => digestOf(`${variant.name} burst ${i}`))
    let started = performance.now()
    const burst = await Promise.allSettled(nodes.map((n, i) => n.router.advertise(digests[i]!)))
    const burstAdvertiseMs = performance.now() - started
    started = performance.now()
    const burstLookups = await Promise.all(nodes.map((n, i) => timeLookup(n, digests[(i + 1) % NODES]!, nodes[(i + 1) % NODES]!.peerId, 1)))
    const burstLookupMs = performance.now() - started

    console.log(`\n${variant.name}: ${NODES} nodes, joined=${joined} in ${joinMs.toFixed(0)} ms, routing tables ${tables.join(',')}`)
    console.log(`  advertise (resolve)                ${fmt(advertise)}`)
    console.log(`  lookup, first provider (limit 1)   ${fmt(lookupFirst)}`)
    console.log(`  lookup to its end, limit 1         ${fmt(lookupOne)}`)
    console.log(`  lookup to its end, limit 8, 1 prov ${fmt(lookupAll)}`)
    console.log(`  misses ${misses} of ${2 * ROUNDS} lookups`)
    console.log(
      `  burst: ${NODES} advertise at once ${burstAdvertiseMs.toFixed(0)} ms wall (${burst.filter((r) => r.status === 'fulfilled').length} ok); ` +
        `${NODES} lookups at once ${burstLookupMs.toFixed(0)} ms wall (${burstLookups.filter((r) => r.hit).length} hits), ` +
        `per-lookup ${fmt(burstLookups.filter((r) => r.hit).map((r) => r.first))}`
    )
  } finally {
    await Promise.allSettled(nodes.map((n) => n.stop()))
  }
}

async function main(): Promise<void> {
  const root = await mkdtemp(path.join(tmpdir(), 'shoal-bench-p2p-'))
  console.log(`node ${process.version}, ${NODES} nodes, ${ROUNDS} rounds per variant`)
  try {
    for (const variant of VARIANTS) await runVariant(variant, root)
  } finally {
    await rm(root, { recursive: true, force: true })
  }
}

await main()
