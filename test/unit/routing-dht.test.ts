import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it, mock } from 'node:test'
import type { QueryEvent } from '@libp2p/kad-dht'
import { pino } from 'pino'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { DEFAULT_REANNOUNCE_INTERVAL_MS, type DhtBackend, DhtContentRouter } from '../../src/routing/dht.js'
import { rankByDistance } from '../../src/routing/key.js'

const logger = pino({ level: 'silent' })
const DIGEST = `sha256:${createHash('sha256').update('blob').digest('hex')}`

const ids = (n: number) => Promise.all(Array.from({ length: n }, async () => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()))

const peer = (id: string) => ({ id: { toString: () => id }, multiaddrs: [{ toString: () => `/ip4/127.0.0.${id.length}/tcp/4001/p2p/${id}` }] })

/** a kad-dht stand-in: a local routing table of `table`, a providers walk that yields `events` (then, when `hang`, never ends, deaf to its signal like a dial to a dead peer), `connected` DHT peers; `walks` counts the walks started */
function backend(table: string[], events: object[], hang = false, connected: string[] = []): DhtBackend & { walks: number } {
  return {
    walks: 0,
    selfId: 'self',
    routingTableSize: () => table.length,
    onPeerAdded: () => () => {},
    provide: async function* () {},
    findProviders: async function* (this: { walks: number }) {
      this.walks++
      for (const event of events) yield event as QueryEvent
      if (hang) await new Promise(() => {})
    },
    localClosest: () => table,
    connectedPeers: async () => connected,
    addressesOf: async (id) => [`/ip4/127.0.0.9/tcp/4001/p2p/${id}`],
    cancelReprovide: async () => {},
  }
}

/** runs `use` with a router over `dht` (with `options`), stopped afterwards */
async function withRouter(dht: DhtBackend, use: (router: DhtContentRouter) => Promise<void>, options: { recordPeers?: number } = {}): Promise<void> {
  const router = new DhtContentRouter(dht, { logger, ...options })
  try {
    await use(router)
  } finally {
    await router.stop()
  }
}

describe('DHT closest peers (origin-fetcher candidates)', () => {
  it('asks the network even with a small table: a peer the table lacks is a candidate', async () => {
    await withRouter(backend(['a'], [{ name: 'PEER_RESPONSE', from: { toString: () => 'a' }, closer: [peer('bb')], providers: [] }]), async (router) => {
      const found = await router.closest(DIGEST)
      assert.deepEqual(found.map((p) => p.id).sort(), ['a', 'bb'])
      assert.deepEqual(found.find((p) => p.id === 'bb')?.addrs, ['/ip4/127.0.0.2/tcp/4001'])
    })
  })

  it('a query cut by its deadline yields at once every peer it heard of (answered or not), and never self', { timeout: 5_000 }, async () => {
    await withRouter(backend(['a'], [{ name: 'PEER_RESPONSE', from: { toString: () => 'a' }, closer: [peer('bb'), peer('self'), peer('ccc')], providers: [] }], true), async (router) => {
      const found = await router.closest(DIGEST, { timeoutMs: 50 })
      assert.deepEqual(found.map((p) => p.id).sort(), ['a', 'bb', 'ccc'])
    })
  })

  it('a connected DHT peer that neither the table nor the query named is a candidate, with its known addresses', async () => {
    await withRouter(backend(['a'], [], false, ['a', 'dddd']), async (router) => {
      const found = await router.closest(DIGEST)
      assert.deepEqual(found.map((p) => p.id).sort(), ['a', 'dddd'])
      assert.deepEqual(found.find((p) => p.id === 'dddd')?.addrs, ['/ip4/127.0.0.9/tcp/4001'])
    })
  })

  it('a lookup and a closest-peers query for the same blob share one walk', async () => {
    const events = [
      { name: 'PEER_RESPONSE', from: { toString: () => 'a' }, closer: [peer('bb')], providers: [] },
      { name: 'PROVIDER', from: { toString: () => 'bb' }, providers: [peer('bb'), peer('self')] },
      { name: 'PEER_RESPONSE', from: { toString: () => 'bb' }, closer: [peer('ccc')], providers: [] },
    ]
    const dht = backend(['a'], events)
    await withRouter(dht, async (router) => {
      const providers = (async () => {
        const out: string[] = []
        for await (const p of router.lookup(DIGEST, { timeoutMs: 1_000 })) out.push(p.id)
        return out
      })()
      const closest = router.closest(DIGEST, { timeoutMs: 1_000 })
      assert.deepEqual(await providers, ['bb'], 'self is never a provider')
      assert.deepEqual((await closest).map((p) => p.id).sort(), ['a', 'bb', 'ccc'])
      assert.equal(dht.walks, 1)
      // a walk that ended is not reused: a later lookup asks the network again
      for await (const _ of router.lookup(DIGEST, { timeoutMs: 1_000 })) break
      assert.equal(dht.walks, 2)
    })
  })
})

describe('DHT peers known near a key (what an origin fetcher names its askers)', () => {
  it('names itself and the nearest of its table, a recent query and its connected peers, nearest first, without a walk', async () => {
    const [self, ...others] = (await ids(12)) as [string, ...string[]]
    const [table, heard, connected] = [others.slice(0, 3), others.slice(3, 6), others.slice(6, 9)]
    const dht = { ...backend(table, [{ name: 'PEER_RESPONSE', from: { toString: () => table[0] }, closer: heard.map(peer), providers: [] }], false, connected), selfId: self }
    await withRouter(dht, async (router) => {
      const known = [self, ...table, ...connected]
      assert.deepEqual(await router.knownNearest(DIGEST, 16), rankByDistance(DIGEST, known))
      assert.equal(dht.walks, 0, 'no network')
      await router.closest(DIGEST, { timeoutMs: 1_000 })
      const all = [...known, ...heard]
      assert.deepEqual(await router.knownNearest(DIGEST, 16), rankByDistance(DIGEST, all), 'with the peers the query heard of')
      assert.deepEqual(await router.knownNearest(DIGEST, 4), rankByDistance(DIGEST, all).slice(0, 4))
    })
  })
})

describe('DHT announce after a providers walk', () => {
  /** a backend whose walk hears of `heard` (then ends, or hangs), counting provides and the peers records were stored on */
  function announcing(heard: string[], options: { stores?: number; hang?: boolean } = {}) {
    const dht = backend(heard.slice(0, 1), [{ name: 'PEER_RESPONSE', from: { toString: () => heard[0] }, closer: heard.map(peer), providers: [] }], options.hang === true)
    const calls = { provides: 0, storedOn: [] as string[][] }
    return {
      calls,
      dht: {
        ...dht,
        provide: async function* () {
          calls.provides++
          yield { name: 'PEER_RESPONSE', messageName: 'ADD_PROVIDER' } as unknown as QueryEvent
        },
        storeRecord: async (_cid: unknown, ids: readonly string[]) => {
          calls.storedOn.push([...ids])
          return options.stores ?? ids.length
        },
      } satisfies DhtBackend,
    }
  }

  // what a router learns the peers near a key from, before it announces: each stores the record
  // on the closest of them, without walking again
  const learnings: { title: string; hang?: boolean; learn(router: DhtContentRouter): Promise<unknown> }[] = [
    { title: 'a closest-peers query returned', learn: (router) => router.closest(DIGEST, { timeoutMs: 1_000 }) },
    { title: 'a closest-peers query returned, its walk cut', hang: true, learn: (router) => router.closest(DIGEST, { timeoutMs: 50 }) },
    {
      title: 'a whole walk heard of',
      learn: async (router) => {
        for await (const _ of router.lookup(DIGEST, { timeoutMs: 1_000 })) {
          // the whole walk: every provider it finds
        }
        await new Promise((resolve) => setImmediate(resolve)) // the walk's end is noted after it
      },
    },
  ]
  for (const { title, hang, learn } of learnings) {
    it(`stores the record on the closest peers ${title}, without walking again`, async () => {
      const heard = await ids(10)
      const { dht, calls } = announcing(heard, { hang })
      await withRouter(
        dht,
        async (router) => {
          await learn(router)
          await router.advertise(DIGEST)
          // the candidates: what the walk heard (and the local table)
          assert.deepEqual(calls.storedOn, [rankByDistance(DIGEST, heard).slice(0, 3)])
          assert.equal(calls.provides, 0)
        },
        { recordPeers: 3 },
      )
    })
  }

  it('a walk minutes old still spares the announce its own walk (a fan-out announces after the download and a spread); one older than a re-announce interval does not', async () => {
    const heard = await ids(10)
    mock.timers.enable({ apis: ['Date'], now: 1_000_000 })
    try {
      for (const [ageMs, walks] of [
        [5 * 60_000, false],
        [DEFAULT_REANNOUNCE_INTERVAL_MS + 1, true],
      ] as const) {
        const { dht, calls } = announcing(heard)
        await withRouter(
          dht,
          async (router) => {
            await router.closest(DIGEST, { timeoutMs: 1_000 })
            mock.timers.tick(ageMs)
            await router.advertise(DIGEST)
            assert.equal(calls.provides, walks ? 1 : 0, `${ageMs} ms after the walk`)
            assert.equal(calls.storedOn.length, walks ? 0 : 1)
          },
          { recordPeers: 3 },
        )
      }
    } finally {
      mock.timers.reset()
    }
  })

  it('walks (provide) with no whole walk behind it, or when no near peer took the record', async () => {
    const heard = await ids(4)
    const fresh = announcing(heard)
    await withRouter(fresh.dht, async (router) => {
      await router.advertise(DIGEST)
      assert.equal(fresh.calls.provides, 1)
      assert.equal(fresh.calls.storedOn.length, 0)
    })
    // a lookup's walk cut by its deadline (no closest-peers query behind it) does not count
    const cut = announcing(heard, { hang: true })
    await withRouter(cut.dht, async (router) => {
      for await (const _ of router.lookup(DIGEST, { timeoutMs: 50 })) break
      await new Promise((resolve) => setImmediate(resolve))
      await router.advertise(DIGEST)
      assert.equal(cut.calls.provides, 1)
      assert.equal(cut.calls.storedOn.length, 0)
    })
    const refused = announcing(heard, { stores: 0 })
    await withRouter(refused.dht, async (router) => {
      await router.closest(DIGEST, { timeoutMs: 1_000 })
      await router.advertise(DIGEST)
      assert.equal(refused.calls.storedOn.length, 1)
      assert.equal(refused.calls.provides, 1)
    })
  })
})
