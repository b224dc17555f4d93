import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import type { QueryEvent } from '@libp2p/kad-dht'
import { pino } from 'pino'
import { type DhtBackend, DhtContentRouter } from '../../src/routing/dht.js'

const logger = pino({ level: 'silent' })
const DIGEST = `sha256:${createHash('sha256').update('blob').digest('hex')}`

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

/** runs `use` with a router over `dht`, stopped afterwards */
async function withRouter(dht: DhtBackend, use: (router: DhtContentRouter) => Promise<void>): Promise<void> {
  const router = new DhtContentRouter(dht, { logger })
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
