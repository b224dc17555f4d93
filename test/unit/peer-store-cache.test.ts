import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { TypedEventEmitter, type Libp2pEvents, type PeerId, type PeerStore } from '@libp2p/interface'
import { defaultLogger } from '@libp2p/logger'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { persistentPeerStore } from '@libp2p/peer-store'
import { multiaddr } from '@multiformats/multiaddr'
import { MemoryDatastore } from 'datastore-core'
import '../../src/polyfill.js'
import { cachePeerStore } from '../../src/p2p/peer-store-cache.js'

const newId = async (): Promise<PeerId> => peerIdFromPrivateKey(await generateKeyPair('Ed25519'))

/** libp2p's own peer store on a memory datastore that counts reads and writes, with the cache in front */
async function cachedStore(freshMs?: number) {
  const datastore = new MemoryDatastore()
  const counts = { gets: 0, puts: 0 }
  const get = datastore.get.bind(datastore)
  const put = datastore.put.bind(datastore)
  datastore.get = (...args: Parameters<typeof get>) => {
    counts.gets++
    return get(...args)
  }
  datastore.put = (...args: Parameters<typeof put>) => {
    counts.puts++
    return put(...args)
  }
  const events = new TypedEventEmitter<Libp2pEvents>()
  const updates: string[] = []
  events.addEventListener('peer:update', (evt) => updates.push(evt.detail.peer.id.toString()))
  const store: PeerStore = persistentPeerStore({ peerId: await newId(), datastore, events, logger: defaultLogger() })
  cachePeerStore(store, freshMs === undefined ? {} : { freshMs })
  return { store, counts, updates }
}

const A = multiaddr('/ip4/127.0.0.1/tcp/4001')
const B = multiaddr('/ip4/127.0.0.1/tcp/4002')

describe('peer store cache', () => {
  test('a peer read twice is read from the datastore once', async () => {
    const { store, counts } = await cachedStore()
    const id = await newId()
    await store.merge(id, { multiaddrs: [A] })
    const before = counts.gets
    const first = await store.get(id)
    const second = await store.get(id)
    assert.equal(counts.gets, before, 'the merge cached the peer it wrote')
    assert.deepEqual(
      second.addresses.map((a) => a.multiaddr.toString()),
      [A.toString()],
    )
    assert.equal(first, second)
  })

  test('a merge that adds nothing writes nothing; one that adds something writes, announces and is read back', async () => {
    const { store, counts, updates } = await cachedStore()
    const id = await newId()
    await store.merge(id, { multiaddrs: [A], protocols: ['/a/1'] })
    const puts = counts.puts
    await store.merge(id, { multiaddrs: [A] })
    await store.merge(id, { protocols: ['/a/1'] })
    await store.merge(id, { multiaddrs: [A], protocols: ['/a/1'] })
    assert.equal(counts.puts, puts, 'nothing new: no write')
    assert.equal(updates.length, 1, 'only the first merge was an update')

    await store.merge(id, { multiaddrs: [B] })
    await store.merge(id, { protocols: ['/b/1'] })
    assert.equal(counts.puts, puts + 2)
    const peer = await store.get(id)
    assert.deepEqual(peer.addresses.map((a) => a.multiaddr.toString()).sort(), [A.toString(), B.toString()])
    assert.deepEqual([...peer.protocols].sort(), ['/a/1', '/b/1'])
    assert.equal(updates.length, 3)

    // anything but addresses and protocols goes to the store
    await store.merge(id, { multiaddrs: [A], tags: { t: { value: 1 } } })
    assert.equal(counts.puts, puts + 3)
    assert.equal((await store.get(id)).tags.get('t')?.value, 1)
  })

  test('patch, save and delete replace what is cached', async () => {
    const { store } = await cachedStore()
    const id = await newId()
    await store.merge(id, { multiaddrs: [A, B], protocols: ['/a/1', '/b/1'] })
    await store.get(id)
    await store.patch(id, { protocols: ['/b/1'] })
    assert.deepEqual((await store.get(id)).protocols, ['/b/1'])
    // the protocol the patch removed is merged again, not taken for known
    await store.merge(id, { protocols: ['/a/1'] })
    assert.deepEqual([...(await store.get(id)).protocols].sort(), ['/a/1', '/b/1'])
    await store.save(id, { multiaddrs: [B] })
    assert.deepEqual(
      (await store.get(id)).addresses.map((a) => a.multiaddr.toString()),
      [B.toString()],
    )
    await store.delete(id)
    await assert.rejects(store.get(id), { name: 'NotFoundError' })
    assert.equal(await store.has(id), false)
  })

  test('a read that a write overtakes does not cache the older peer', async () => {
    // the real store orders reads and writes of a peer under its lock; the cache must not rely
    // on it: a store whose read of a peer answers only after a write of it has finished
    const { store: real } = await cachedStore()
    const id = await newId()
    await real.merge(id, { protocols: ['/old/1'] })
    const old = await real.get(id)
    let answer = (): void => {}
    const late = new Promise<void>((resolve) => {
      answer = resolve
    })
    let current = old
    const slow = {
      get: async () => {
        const seen = current
        await late
        return seen
      },
      merge: async () => {
        current = { ...old, protocols: ['/new/1'] }
        return current
      },
      patch: async () => current,
      save: async () => current,
      delete: async () => {},
    } as unknown as PeerStore
    cachePeerStore(slow)
    const reading = slow.get(id)
    await slow.merge(id, { protocols: ['/new/1'] })
    answer()
    assert.deepEqual((await reading).protocols, ['/old/1'], 'the read answers what it read')
    assert.deepEqual((await slow.get(id)).protocols, ['/new/1'], 'but the merge is what stays cached')
  })

  test('a cached peer is read again once it is older than the freshness bound', async () => {
    const { store, counts } = await cachedStore(20)
    const id = await newId()
    await store.merge(id, { multiaddrs: [A] })
    await store.get(id)
    const before = counts.gets
    await sleep(40)
    await store.get(id)
    assert.equal(counts.gets, before + 1)
  })
})
