import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { pino } from 'pino'
import { MAX_NEAR_PEERS, decodeInfo, encodeInfo } from '../../src/peer/protocol.js'
import type { BlobInfo } from '../../src/peer/types.js'
import { BlobStore } from '../../src/store/blob-store.js'
import { parseDigest } from '../../src/oci/digest.js'
import { PeerUnreachableError } from '../../src/peer/errors.js'
import type { PeerRef } from '../../src/routing/types.js'
import { rankByDistance } from '../../src/routing/key.js'
import { planFanout } from '../../src/swarm/fanout.js'
import { PeerPenalties } from '../../src/swarm/penalties.js'
import type { PeerChunkClient } from '../../src/swarm/types.js'
import { mergeHoldings } from '../../src/swarm/peer-source.js'
import { StoreChunkProvider } from '../../src/swarm/provider.js'
import { chunkBounds, chunkHash, planChunks } from '../../src/transfer/chunks/plan.js'
import { ChunkScheduler, type ChunkSource, NoSourceError } from '../../src/transfer/chunks/scheduler.js'
import { ChunkState } from '../../src/transfer/chunks/state.js'
import { OriginStripes } from '../../src/transfer/chunks/stripes.js'
import { Download } from '../../src/transfer/download.js'
import type { FanoutPlan } from '../../src/transfer/swarm-download.js'
import { prng } from '../helpers/random.js'
import { putBlob } from '../helpers/store.js'

const log = pino({ level: 'silent' })
const DIGEST = `sha256:${'5a'.repeat(32)}`

async function peerIds(n: number): Promise<string[]> {
  return Promise.all(Array.from({ length: n }, async () => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()))
}

/** a data client that only answers info asks */
function infoOnly(info: PeerChunkClient['info']): PeerChunkClient {
  return {
    info,
    fetchChunk: async () => {
      throw new Error('not in this test')
    },
  }
}

/** two origin fetchers chosen by `self` for DIGEST among `others` (the query names them all at once) */
function twoFetchersAmong(self: string, others: readonly string[], client: PeerChunkClient, signal: AbortSignal) {
  return planFanout({ registry: 'r.test', name: 'a/b', digest: parseDigest(DIGEST) }, Promise.resolve(planChunks(10, 4)), {
    selfId: self,
    closest: async () => others.map((id, i) => ({ id, addrs: [`/ip4/127.0.0.1/tcp/${i + 1}`] })),
    client,
    penalties: new PeerPenalties(60_000),
    fetchers: 2,
    lookupTimeoutMs: 0,
    infoTimeoutMs: 100,
    logger: log,
    signal,
  })
}

/** twoFetchersAmong's plan, handed to `check`; the asks still going on are stopped after, pass or fail */
async function withTwoFetchers(self: string, others: readonly string[], client: PeerChunkClient, check: (plan: FanoutPlan) => Promise<void>): Promise<void> {
  const stop = new AbortController()
  try {
    const plan = await twoFetchersAmong(self, others, client, stop.signal)
    assert.ok(plan)
    await check(plan)
  } finally {
    stop.abort()
  }
}

/** a promise that resolves once `letThrough` is called */
function closedGate(): { gate: Promise<void>; letThrough: () => void } {
  let letThrough: () => void = () => {}
  const gate = new Promise<void>((resolve) => {
    letThrough = resolve
  })
  return { gate, letThrough }
}

/** what a fetcher that has not begun on the blob answers a `want` ask: no chunks, and the nodes it knows near the key */
function notBegun(near: readonly string[]): Awaited<ReturnType<PeerChunkClient['info']>> {
  return { size: 0, chunkSize: 4, have: [], near: [...near] }
}

describe('origin stripes', () => {
  test('chunks are striped over the fetchers in rank order; a dropped fetcher hands its chunks on', () => {
    const s = new OriginStripes(['a', 'self', 'c'], 'self')
    assert.deepEqual([0, 1, 2, 3, 4, 5].map((i) => s.owner(i)), ['a', 'self', 'c', 'a', 'self', 'c'])
    assert.deepEqual([0, 1, 2].map((i) => s.mine(i)), [false, true, false])
    assert.deepEqual(s.others(), ['a', 'c'])
    assert.equal(s.drop('a'), true)
    assert.equal(s.drop('a'), false, 'already dropped')
    assert.equal(s.drop('self'), false, 'a node never drops itself')
    assert.deepEqual([0, 1, 2, 3].map((i) => s.owner(i)), ['self', 'c', 'self', 'c'])
    s.drop('c')
    assert.deepEqual(s.others(), [])
    assert.equal(s.mine(1), true)
  })

  test('a fetcher fetches its own share first to last, and takes chunks from the end of a share that lags behind its own', () => {
    // a: 0, 3, …, 21; b: 1, 4, …, 22; self: 2, 5, …, 23
    const self = new OriginStripes(['a', 'b', 'self'], 'self')
    const b = new OriginStripes(['a', 'b', 'self'], 'b')
    assert.equal(self.next(24, () => true), 2, 'shares level: its own first')
    assert.equal(b.next(24, () => true), 1)
    // a's share all free; b has its 10 left, self nothing: a's chunks 0, 3, …, 21 are its 0th…7th,
    // the odd ones for self (second of the others), the even ones for b
    const free = (i: number): boolean => i % 3 === 0 || i === 10
    assert.equal(self.next(24, free), 21)
    assert.equal(b.next(24, free), 18)
    assert.equal(self.next(24, (i) => free(i) && i !== 21), 15, 'the next of its own part, never b’s')
    // a lagging share is taken from while its own has chunks left too, once the gap passes the margin
    assert.equal(self.next(24, (i) => i % 3 === 0 || i === 20 || i === 23), 21, '8 free against 2')
    assert.equal(self.next(24, (i) => i % 3 === 0 || (i % 3 === 2 && i >= 11)), 11, '8 free against 5: its own')
    // three free chunks of a share must come before the one taken
    assert.equal(self.next(24, (i) => i % 3 === 0 && i >= 12), 21)
    assert.equal(b.next(24, (i) => i % 3 === 0 && i >= 12), undefined, '18 has only 12 and 15 before it')
    assert.equal(b.next(24, (i) => i === 18 || i === 21 || i === 10), 10, 'no gap: its own')
    // a node that is no fetcher never fetches from origin; one alone, or left alone, fetches all in order
    assert.equal(new OriginStripes(['a', 'b'], 'self').next(24, () => true), undefined)
    assert.equal(new OriginStripes(['self'], 'self').next(24, (i) => i > 4), 5)
    const orphan = new OriginStripes(['a'], 'self')
    orphan.drop('a')
    assert.equal(orphan.next(24, (i) => i > 6), 7)
  })

  test('with no fetcher left, this node fetches everything', () => {
    const s = new OriginStripes(['a'], 'self')
    assert.equal(s.mine(0), false)
    s.drop('a')
    assert.equal(s.owner(0), undefined)
    assert.equal(s.mine(0), true)
  })
})

describe('fetcher ranking', () => {
  test('the closest-peers query runs as long as the blob is being planned: a peer heard of late is a candidate', async () => {
    const [self, early, late] = await peerIds(3)
    const heard: PeerRef[] = [{ id: early as string, addrs: ['/ip4/127.0.0.1/tcp/1'] }]
    setTimeout(() => heard.push({ id: late as string, addrs: ['/ip4/127.0.0.1/tcp/2'] }), 150).unref()
    const client = infoOnly(async () => undefined)
    const stop = new AbortController()
    try {
      const plan = await planFanout(
        { registry: 'r.test', name: 'a/b', digest: parseDigest(DIGEST) },
        sleep(300).then(() => planChunks(10, 4)),
        {
          selfId: self as string,
          // a query that keeps learning peers until told to stop (or its deadline)
          closest: async (_digest, { signal, timeoutMs }) => {
            await new Promise((resolve) => {
              signal.addEventListener('abort', resolve, { once: true })
              setTimeout(resolve, timeoutMs).unref()
            })
            return [...heard]
          },
          client,
          penalties: new PeerPenalties(60_000),
          fetchers: 3,
          lookupTimeoutMs: 50,
          infoTimeoutMs: 100,
          logger: log,
          signal: stop.signal,
        },
      )
      assert.ok(plan)
      await plan.settled
      assert.deepEqual(new Set(plan.stripes.others()), new Set([early, late]), 'both peers are fetchers')
    } finally {
      stop.abort()
    }
  })

  test('a closest-peers query that ends before the lookup deadline is not waited out', async () => {
    const [self, peer] = await peerIds(2)
    const stop = new AbortController()
    const started = Date.now()
    try {
      const plan = await planFanout({ registry: 'r.test', name: 'a/b', digest: parseDigest(DIGEST) }, Promise.resolve(planChunks(10, 4)), {
        selfId: self as string,
        closest: async () => [{ id: peer as string, addrs: ['/ip4/127.0.0.1/tcp/1'] }],
        client: infoOnly(async () => undefined),
        penalties: new PeerPenalties(60_000),
        fetchers: 2,
        lookupTimeoutMs: 5_000,
        infoTimeoutMs: 100,
        logger: log,
        signal: stop.signal,
      })
      assert.ok(plan)
      await plan.settled
      assert.deepEqual(plan.stripes.others(), [peer])
      assert.ok(Date.now() - started < 2_500, `planned in ${Date.now() - started} ms, the deadline is 5,000`)
    } finally {
      stop.abort()
    }
  })

  test('a candidate that cannot be dialled is passed over for the next at once; one that is merely failing is not', async () => {
    const ids = (await peerIds(5)) as string[]
    const [self, ...others] = ids as [string, ...string[]]
    const ranked = rankByDistance(DIGEST, ids).filter((id) => id !== self)
    const dead = ranked[0] as string
    // a loaded peer whose stream was reset: still counted on
    const loaded = ranked[1] as string
    const client = infoOnly(async (peer) => {
      if (peer.id === dead) throw new PeerUnreachableError('connection refused', { refused: true })
      if (peer.id === loaded) throw new PeerUnreachableError('stream reset')
      return undefined
    })
    await withTwoFetchers(self, others, client, async (plan) => {
      const fetchers = await plan.settled
      const expected = rankByDistance(DIGEST, ids).filter((id) => id !== dead).slice(0, 2)
      assert.ok(expected.includes(loaded), 'the loaded peer ranks among the fetchers')
      assert.deepEqual([0, 1].map((i) => plan.stripes.owner(i)), expected, 'the two closest that can be reached, in rank order')
      assert.ok(!fetchers.some((src) => src.id === dead))
    })
  })

  test('a candidate that refuses once and answers when asked again is a fetcher', async () => {
    const ids = (await peerIds(4)) as string[]
    const [self, ...others] = ids as [string, ...string[]]
    const flaky = rankByDistance(DIGEST, others)[0] as string
    let refusals = 0
    const client = infoOnly(async (peer) => {
      if (peer.id === flaky && refusals++ === 0) throw new PeerUnreachableError('dial refused', { refused: true })
      return undefined
    })
    await withTwoFetchers(self, others, client, async (plan) => {
      const fetchers = await plan.settled
      assert.equal(refusals, 2, 'asked twice')
      assert.ok(fetchers.some((src) => src.id === flaky))
    })
  })

  test('a node whose query missed the nodes nearest the key adopts them from the fetcher it asked, asks them, and ranks them first instead of itself', async () => {
    const ids = rankByDistance(DIGEST, await peerIds(6))
    const [first, second, self, ...farther] = ids as [string, string, string, ...string[]]
    const asked: { id: string; want: string | undefined }[] = []
    const client = infoOnly(async (peer, _digest, { want }) => {
      asked.push({ id: peer.id, want })
      return notBegun(ids)
    })
    // the query found only nodes farther than this one: by itself, it would rank itself first
    await withTwoFetchers(self, farther, client, async (plan) => {
      const fetchers = await plan.settled
      assert.deepEqual([0, 1].map((i) => plan.stripes.owner(i)), [first, second], 'the two nearest the key, in rank order')
      assert.equal(plan.stripes.mine(0) || plan.stripes.mine(1), false, 'this node fetches nothing from origin')
      assert.deepEqual(asked.map((a) => a.id), [farther[0], first, second], 'the fetcher its view ranked, then the nodes that fetcher named')
      assert.ok(asked.every((a) => a.want === 'r.test/a/b'), 'each was asked to start on the blob')
      assert.deepEqual(fetchers.map((src) => src.id), [first, second])
    })
  })

  test('a fetcher whose ask timed out is asked again, and the nodes its answer names near the key are adopted', async () => {
    const ids = rankByDistance(DIGEST, await peerIds(6))
    const [first, second, self, ...farther] = ids as [string, string, string, ...string[]]
    const asked: string[] = []
    const client = infoOnly(async (peer) => {
      asked.push(peer.id)
      // the first ask to the node the query ranked first times out (a loaded node at the round's start)
      if (asked.length === 1) throw new DOMException('timed out after 100 ms', 'TimeoutError')
      return notBegun(ids)
    })
    await withTwoFetchers(self, farther, client, async (plan) => {
      const fetchers = await plan.settled
      assert.deepEqual(asked, [farther[0], farther[0], first, second], 'asked again, then the nodes its answer named')
      assert.deepEqual([0, 1].map((i) => plan.stripes.owner(i)), [first, second], 'the two nearest the key, as the rest of the fleet ranks them')
      assert.deepEqual(fetchers.map((src) => src.id), [first, second])
    })
  })

  test('a failed ask is not made again once another candidate has named the nodes near the key', async () => {
    const ids = rankByDistance(DIGEST, await peerIds(5))
    const [first, second, ...rest] = ids as [string, string, ...string[]]
    const self = rest[rest.length - 1] as string
    const asked: string[] = []
    const client = infoOnly(async (peer) => {
      asked.push(peer.id)
      if (peer.id !== first) return notBegun(ids)
      // a silent node (a dead host's packets dropped): its ask times out after the other answered
      await sleep(20)
      throw new DOMException('timed out after 100 ms', 'TimeoutError')
    })
    await withTwoFetchers(self, ids.filter((id) => id !== self), client, async (plan) => {
      await plan.settled
      assert.equal(asked.filter((id) => id === first).length, 1, 'asked once')
      assert.deepEqual([0, 1].map((i) => plan.stripes.owner(i)), [first, second], 'still counted on (no proof it is dead)')
    })
  })

  test('the download begins on the query’s ranking while the fetchers are asked; what the asks settle replaces it', async () => {
    const ids = rankByDistance(DIGEST, await peerIds(6))
    const [first, second, self, ...farther] = ids as [string, string, string, ...string[]]
    // the asks are answered only once let through
    const { gate, letThrough } = closedGate()
    const client = infoOnly(async () => {
      await gate
      return notBegun(ids)
    })
    // the query found only nodes farther than this one: it ranks itself first until the asks name nearer ones
    await withTwoFetchers(self, farther, client, async (plan) => {
      assert.deepEqual([0, 1].map((i) => plan.stripes.owner(i)), [self, farther[0]], 'the query’s ranking, before any answer')
      assert.ok(plan.stripes.mine(0), 'this node fetches its share from origin meanwhile')
      letThrough()
      const fetchers = await plan.settled
      assert.deepEqual([0, 1].map((i) => plan.stripes.owner(i)), [first, second], 're-ranked by the answers')
      assert.equal(plan.stripes.mine(0) || plan.stripes.mine(1), false)
      assert.deepEqual(fetchers.map((src) => src.id), [first, second])
    })
  })

  test('each candidate that answers is handed over as a source at once, before the asks are over', async () => {
    const ids = rankByDistance(DIGEST, await peerIds(6))
    const [first, second, self, ...farther] = ids as [string, string, string, ...string[]]
    // the fetcher the query found answers at once, naming nearer nodes; those answer only once let through
    const { gate, letThrough } = closedGate()
    const client = infoOnly(async (peer) => {
      if (peer.id === first || peer.id === second) await gate
      return notBegun(ids)
    })
    await withTwoFetchers(self, farther, client, async (plan) => {
      const answered: string[] = []
      plan.answered.follow((src) => answered.push(src.id))
      for (let i = 0; i < 100 && answered.length === 0; i++) await sleep(10)
      let over = false
      void plan.settled.then(() => {
        over = true
      })
      assert.deepEqual(answered, [farther[0]], 'the candidate that answered, while the nodes it named are still asked')
      assert.equal(over, false)
      letThrough()
      await plan.settled
      assert.deepEqual(answered.slice(1).sort(), [first, second].sort(), 'then each as it answered')
    })
  })

  test('a fleet whose closest-peers queries each found part of it chooses the same fetchers', async () => {
    const fleet = await peerIds(16)
    const nearest = rankByDistance(DIGEST, fleet)
    const random = prng(0x5eed)
    // each node's query found 9-15 of the other 15 (as in a loaded 16-node bench run), and a few
    // missed both nodes nearest the key
    const views = fleet.map((self, n) => {
      const others = fleet.filter((id) => id !== self)
      for (let i = others.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1))
        ;[others[i], others[j]] = [others[j] as string, others[i] as string]
      }
      const view = others.slice(0, 9 + Math.floor(random() * 7))
      return n % 4 === 1 ? view.filter((id) => id !== nearest[0] && id !== nearest[1]) : view
    })
    // a fetcher asked with `want` names the nodes nearest the key as its own (complete) table knows them
    const client = infoOnly(async (_peer, _digest, { want }) => (want === undefined ? undefined : notBegun(nearest)))
    const stop = new AbortController()
    try {
      const pairs = new Map<string, number>()
      for (const [n, self] of fleet.entries()) {
        const plan = await twoFetchersAmong(self, views[n] as string[], client, stop.signal)
        assert.ok(plan)
        await plan.settled
        const pair = [0, 1].map((i) => plan.stripes.owner(i)?.slice(-6)).join('+')
        pairs.set(pair, (pairs.get(pair) ?? 0) + 1)
      }
      const expected = nearest.slice(0, 2).map((id) => id.slice(-6)).join('+')
      assert.deepEqual([...pairs], [[expected, 16]], 'nodes per pair of fetchers chosen')
    } finally {
      stop.abort()
    }
  })

  test('the rounds of asking the nodes named near the key are bounded', async () => {
    const ids = rankByDistance(DIGEST, await peerIds(12))
    const self = ids[11] as string
    const asked: string[] = []
    // every fetcher names two nodes nearer than itself: without a bound this would go on
    const client = infoOnly(async (peer) => {
      asked.push(peer.id)
      const rank = ids.indexOf(peer.id)
      return notBegun(ids.slice(Math.max(0, rank - 2), rank))
    })
    await withTwoFetchers(self, [ids[9] as string, ids[10] as string], client, async (plan) => {
      await plan.settled
      assert.equal(asked.length, 6, 'the two the query found, then two more in each of two rounds')
      assert.deepEqual([0, 1].map((i) => plan.stripes.owner(i)), [ids[5], ids[6]], 'the nearest of those asked')
    })
  })

  test('every node ranks the same ids the same way, whatever order it learnt them in', async () => {
    const ids = await peerIds(8)
    const a = rankByDistance(DIGEST, ids)
    const b = rankByDistance(DIGEST, [...ids].reverse())
    const c = rankByDistance(DIGEST, [ids[3] as string, ...ids, ids[0] as string])
    assert.deepEqual(a, b)
    assert.deepEqual(a, c, 'duplicates collapse')
    assert.equal(a.length, 8)
  })

  test('different blobs get different fetchers (load spreads over the fleet)', async () => {
    const ids = await peerIds(16)
    const firsts = new Set<string>()
    for (let i = 0; i < 20; i++) firsts.add(rankByDistance(`sha256:${i.toString(16).padStart(64, '0')}`, ids)[0] as string)
    assert.ok(firsts.size >= 5, `20 blobs had only ${firsts.size} distinct first fetchers`)
  })
})

describe('scheduler with an origin gate (fan-out)', () => {
  // the scheduler's timers are unref'd (a daemon has sockets keeping it alive; a test has not)
  let keepAlive: NodeJS.Timeout
  before(() => {
    keepAlive = setInterval(() => {}, 1_000)
  })
  after(() => clearInterval(keepAlive))
  const CHUNK = 1024
  /** a random blob of `count` chunks: its chunks, their check, and the buffer `accept` assembles it in */
  const blobOf = (count: number) => {
    const bytes = randomBytes(CHUNK * count)
    const plan = planChunks(bytes.length, CHUNK)
    const chunk = (i: number): Buffer => {
      const { start, end } = chunkBounds(plan, i)
      return Buffer.from(bytes.subarray(start, end))
    }
    const hashes = Array.from({ length: plan.count }, (_, i) => chunkHash(chunk(i)))
    const out = Buffer.alloc(bytes.length)
    return {
      bytes,
      plan,
      chunk,
      out,
      verify: (i: number, b: Uint8Array): boolean => chunkHash(b) === hashes[i],
      accept: async (i: number, b: Uint8Array): Promise<void> => {
        Buffer.from(b).copy(out, chunkBounds(plan, i).start)
      },
    }
  }
  /** origin, gated to this node's share of `stripes`, noting in `asked` each chunk it is asked for */
  const stripedOrigin = (stripes: OriginStripes, chunk: (i: number) => Buffer, asked: number[] = []): ChunkSource => ({
    id: 'origin',
    kind: 'origin',
    has: (i) => stripes.mine(i),
    fetch: async (i) => {
      asked.push(i)
      return chunk(i)
    },
  })

  test('origin fetches only this node’s share; the rest comes from a peer as it lands', async () => {
    const { bytes, plan, chunk, out, verify, accept } = blobOf(8)
    const stripes = new OriginStripes(['peer', 'self'], 'self')
    const originAsked: number[] = []
    const started = Date.now()
    // the other fetcher gets its chunks over time
    const peer: ChunkSource = {
      id: 'peer',
      kind: 'peer',
      has: (i) => stripes.owner(i) === 'peer' && Date.now() - started > 50 + i * 10,
      fetch: async (i) => chunk(i),
    }
    const s = new ChunkScheduler({
      plan,
      verify,
      accept,
      peers: [peer],
      origin: stripedOrigin(stripes, chunk, originAsked),
      mayWait: () => stripes.others().length > 0,
      pollMs: 10,
    })
    await s.run(AbortSignal.timeout(5_000))
    assert.deepEqual(out, bytes)
    assert.deepEqual(originAsked.sort((a, b) => a - b), [1, 3, 5, 7])
  })

  test('a fetcher ahead of the other fetches the lagging fetcher’s last chunks; origin sends each chunk once', async () => {
    const { bytes, plan, chunk, out, verify, accept } = blobOf(16)
    const stripes = new OriginStripes(['slow', 'self'], 'self')
    // the other fetcher fetches its share (even chunks) first to last, slowly, and skips what this node took
    const slowHas = new Set<number>()
    const originAsked: number[] = []
    let stop = false
    const slowFetcher = (async () => {
      for (let i = 0; i < plan.count && !stop; i += 2) {
        await sleep(40)
        if (!originAsked.includes(i)) {
          originAsked.push(i)
          slowHas.add(i)
        }
      }
    })()
    const slow: ChunkSource = { id: 'slow', kind: 'peer', has: (i) => slowHas.has(i), fetch: async (i) => chunk(i) }
    const s = new ChunkScheduler({
      plan,
      verify,
      accept,
      peers: [slow],
      origin: stripedOrigin(stripes, chunk, originAsked),
      originPick: (free) => stripes.next(plan.count, free),
      mayWait: () => true,
      pollMs: 5,
    })
    const result = await s.run(AbortSignal.timeout(5_000))
    stop = true
    await slowFetcher
    assert.deepEqual(out, bytes)
    assert.equal(new Set(originAsked).size, originAsked.length, `origin asked for a chunk twice: ${originAsked}`)
    // the slow fetcher's last chunks came from origin through this node, down to its margin
    const stolen = originAsked.filter((i) => i % 2 === 0 && !slowHas.has(i))
    assert.ok(stolen.includes(14) && stolen.includes(12), `stolen: ${stolen}`)
    assert.ok(stolen.every((i) => i >= 6), `stolen: ${stolen}`)
    assert.ok((result.bySource.get('slow') ?? 0) > 0)
  })

  test('when the other fetcher is dropped, origin takes its chunks; without waiting, a closed gate fails fast', async () => {
    const { bytes, plan, chunk, verify } = blobOf(8)
    const stripes = new OriginStripes(['peer', 'self'], 'self')
    const origin = stripedOrigin(stripes, chunk)
    const make = (mayWait: () => boolean): ChunkScheduler =>
      new ChunkScheduler({
        plan,
        verify,
        accept: async () => {},
        peers: [],
        origin,
        mayWait,
        pollMs: 10,
      })
    await assert.rejects(make(() => false).run(AbortSignal.timeout(5_000)), NoSourceError)
    const run = make(() => stripes.others().length > 0).run(AbortSignal.timeout(5_000))
    await sleep(50)
    stripes.drop('peer')
    const result = await run
    assert.equal(result.bySource.get('origin'), bytes.length)
  })
})

describe('chunk provider over the store', () => {
  test('computes, records and serves the chunk table of a held blob', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-provider-'))
    const store = await BlobStore.open(dir, log)
    try {
      const bytes = randomBytes(10 * 1024 + 17)
      const digest = await putBlob(store, bytes)
      const chunkSize = 4096
      const provider = new StoreChunkProvider({ store, download: () => undefined, chunkSize, uploadBuffers: 1, logger: log })
      const info = await provider.info(digest)
      const plan = planChunks(bytes.length, chunkSize)
      const expected = Array.from({ length: plan.count }, (_, i) => {
        const { start, end } = chunkBounds(plan, i)
        return chunkHash(bytes.subarray(start, end))
      })
      assert.deepEqual(info, { size: bytes.length, chunkSize, table: expected, have: [true, true, true] })
      assert.deepEqual((await store.getChunkTable(digest))?.hashes, expected, 'recorded in the index')
      const read = await provider.read(digest, 2, AbortSignal.timeout(5_000))
      assert.ok(read)
      assert.deepEqual(read.bytes, bytes.subarray(8192))
      assert.equal(await provider.read(digest, 3, AbortSignal.timeout(5_000)), undefined, 'past the last chunk')
      assert.equal(await provider.info(`sha256:${'0'.repeat(64)}`), undefined, 'unknown blob')
      assert.deepEqual(provider.layout(digest), { size: bytes.length, chunkSize: 4096 })
      assert.equal(provider.layout(`sha256:${'0'.repeat(64)}`), undefined, 'unknown blob: no layout')
      // a small chunk (at most a sixteenth of the chunk size, here the 100-byte last one) comes in a buffer of its own size
      const config = randomBytes(chunkSize + 100)
      const small = await provider.read(await putBlob(store, config), 1, AbortSignal.timeout(5_000))
      assert.ok(small)
      assert.deepEqual(small.bytes, config.subarray(chunkSize))
      assert.notEqual(small.bytes.buffer.byteLength, chunkSize, 'not one of the pool\'s chunk-sized buffers')
      small.release?.()

      // peer exchange: each asker is named to the others, never to itself
      const [p1, p2, p3] = ['1', '2', '3'].map((c) => `12D3KooW${c.repeat(44)}`) as [string, string, string]
      assert.equal((await provider.info(digest, undefined, p1))?.peers, undefined, 'the first asker hears of nobody')
      assert.deepEqual((await provider.info(digest, undefined, p2))?.peers, [p1])
      assert.deepEqual((await provider.info(digest, undefined, p3))?.peers, [p2, p1], 'most recent first')
      assert.deepEqual((await provider.info(digest, undefined, p1))?.peers, [p3, p2])
      const wire = decodeInfo(encodeInfo((await provider.info(digest, undefined, p2)) as BlobInfo))
      assert.deepEqual(wire.peers, [p1, p3], 'names travel on the wire')
    } finally {
      await store.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  test('names the peers near a blob’s key only to a fetcher’s ask, even before it has begun on the blob', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-provider-'))
    const store = await BlobStore.open(dir, log)
    try {
      const digest = await putBlob(store, randomBytes(5000))
      const chunkSize = 4096
      const [self, far, asker] = (await peerIds(3)) as [string, string, string]
      const counts: number[] = []
      const provider = new StoreChunkProvider({
        store,
        download: () => undefined,
        chunkSize,
        uploadBuffers: 1,
        logger: log,
        near: async (_digest, count) => {
          counts.push(count)
          return [self, far]
        },
      })
      assert.equal((await provider.info(digest, undefined, asker))?.near, undefined, 'not on a holdings ask')
      assert.equal((await provider.info(digest, { held: 0, signal: AbortSignal.timeout(1_000) }, asker))?.near, undefined, 'not on a long poll')
      assert.deepEqual(counts, [], 'nobody else pays for the list')
      const held = await provider.wantInfo(digest, asker)
      assert.deepEqual(held?.have, [true, true], 'holdings as ever')
      assert.deepEqual(held?.near, [self, far])
      assert.deepEqual(counts, [MAX_NEAR_PEERS])
      // asked before it has begun (its size unknown): no chunks, the near peers all the same
      const unknown = `sha256:${'0'.repeat(64)}`
      const notBegun = await provider.wantInfo(unknown, asker)
      assert.deepEqual(notBegun, { size: 0, chunkSize, have: [], near: [self, far] })
      assert.deepEqual(decodeInfo(encodeInfo(notBegun as BlobInfo)), notBegun, 'a valid answer on the wire')
      // a node that cannot name any answers as before (404 for a blob it has not begun on)
      const failing = new StoreChunkProvider({ store, download: () => undefined, chunkSize, uploadBuffers: 1, logger: log, near: async () => Promise.reject(new Error('stopped')) })
      assert.equal(await failing.wantInfo(unknown, asker), undefined)
      assert.equal((await failing.wantInfo(digest, asker))?.near, undefined)
    } finally {
      await store.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  test('holdings long polls: each answered at one new chunk while few wait, at two while many do (the first and the last at once)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-provider-'))
    const store = await BlobStore.open(dir, log)
    try {
      const digest = `sha256:${'1'.repeat(64)}`
      const chunkSize = 4096
      const download = new Download(digest, log)
      const chunks = new ChunkState(planChunks(5 * chunkSize, chunkSize))
      download.chunks = chunks
      const provider = new StoreChunkProvider({ store, download: (d) => (d === digest ? download : undefined), chunkSize, uploadBuffers: 1, logger: log })
      const gain = async (index: number): Promise<void> => {
        chunks.mark(index, chunkHash(Buffer.from([index])))
        download.progress()
        await sleep(20)
      }
      /** a long poll by an asker that knows of `held` chunks; `answered` once it is */
      const poll = (held: number): { answered: boolean; info: Promise<BlobInfo | undefined> } => {
        const p = { answered: false, info: Promise.resolve<BlobInfo | undefined>(undefined) }
        p.info = provider.info(digest, { held, signal: AbortSignal.timeout(5_000) }).then((info) => {
          p.answered = true
          return info
        })
        return p
      }
      const first = poll(0)
      await sleep(20)
      assert.equal(first.answered, false, 'nothing held yet')
      await gain(0)
      assert.deepEqual((await first.info)?.have, [true, false, false, false, false], 'the first chunk: at once')
      // four polls waiting: each answered at the next chunk
      const few = [1, 1, 1, 1].map(poll)
      await sleep(20)
      await gain(1)
      assert.ok(few.every((p) => p.answered), 'few waiting: one chunk more is enough')
      // five waiting: the answers wait for two chunks more
      const many = [2, 2, 2, 2, 2].map(poll)
      await sleep(20)
      await gain(2)
      assert.ok(many.every((p) => !p.answered), 'many waiting: one chunk more is not enough')
      await gain(3)
      assert.ok(many.every((p) => p.answered), 'two chunks more')
      assert.deepEqual((await (many[0] as { info: Promise<BlobInfo | undefined> }).info)?.have, [true, true, true, true, false])
      const last = [4, 4, 4, 4, 4].map(poll)
      await sleep(20)
      await gain(4)
      assert.ok(last.every((p) => p.answered), 'the last chunk: answered, though only one more')
    } finally {
      await store.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('holdings', () => {
  test('a download’s info tells only the hashes of the chunks held, and follows its later chunks', () => {
    const plan = planChunks(4 * 100, 100)
    const known = ['a', 'b', 'c', 'd'].map((c) => c.repeat(64))
    // a table learnt from peers: its hashes are not this node's to tell until it holds the chunks
    const chunks = new ChunkState(plan, known)
    const info = chunks.info()
    assert.deepEqual(info, { size: 400, chunkSize: 100, table: ['', '', '', ''], have: [false, false, false, false] })
    chunks.mark(2, known[2] as string)
    assert.deepEqual(info.table, ['', '', known[2], ''], 'its own arrays, not copies: a long poll does not copy the blob’s table')
    assert.deepEqual(info.have, [false, false, true, false])
    assert.equal(encodeInfo(chunks.info(), Buffer.from([0])).includes(known[2] as string), true, 'on the wire')
  })

  test('a peer’s answer adds the chunks it newly holds with their hashes, and nothing else', () => {
    const hash = (c: string): string => c.repeat(64)
    const have = [true, false, false, false, false]
    const table: (string | undefined)[] = [hash('a'), undefined, undefined, undefined, undefined]
    const answer = { size: 5, chunkSize: 1, have: [true, true, true, false, true], table: ['', hash('b'), 'short', '', hash('e')] }
    assert.equal(mergeHoldings(have, table, answer), 2, 'chunk 2 came without a hash: not taken')
    assert.deepEqual(have, [true, true, false, false, true])
    assert.deepEqual(table, [hash('a'), hash('b'), undefined, undefined, hash('e')], 'a known hash stays as it was')
    assert.equal(mergeHoldings(have, table, answer), 0, 'the same answer again adds nothing')
    assert.equal(mergeHoldings(have, table, { ...answer, have: [true, true, true, true, true, true] }), 0, 'another chunk count: ignored')
    assert.equal(mergeHoldings(have, table, { size: 5, chunkSize: 1, have: [true, true, true, true, true] }), 0, 'no table: no hashes, nothing taken')
    assert.deepEqual(have, [true, true, false, false, true])
  })
})
