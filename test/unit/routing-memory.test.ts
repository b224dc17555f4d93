import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { rankByDistance } from '../../src/routing/key.js'
import { type MemoryContentRouter, MemoryRoutingTable } from '../../src/routing/memory.js'
import { InvalidDigestError, NoPeersError, type PeerRef, RouterStoppedError } from '../../src/routing/types.js'
import type { ContentRouter } from '../../src/routing/types.js'

function digestOf(data: string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

function peer(n: number): PeerRef {
  return { id: `peer-${n}`, addrs: [`/ip4/10.0.0.${n}/tcp/4001`] }
}

async function collect(router: ContentRouter, digest: string, options?: Parameters<ContentRouter['lookup']>[1]): Promise<string[]> {
  const ids: string[] = []
  for await (const ref of router.lookup(digest, options)) ids.push(ref.id)
  return ids
}

describe('MemoryRoutingTable', () => {
  const blob = digestOf('blob')

  it('is ready only once another node is attached', () => {
    const table = new MemoryRoutingTable()
    const a = table.attach(peer(1))
    assert.equal(a.ready(), false)
    const b = table.attach(peer(2))
    assert.equal(a.ready(), true)
    assert.equal(b.ready(), true)
    b.detach()
    assert.equal(a.ready(), false)
    assert.equal(b.ready(), false)
  })

  it('finds the peers that advertised, excluding self, de-duplicated', async () => {
    const table = new MemoryRoutingTable()
    const [a, b, c] = [table.attach(peer(1)), table.attach(peer(2)), table.attach(peer(3))]
    await a.advertise(blob)
    await b.advertise(blob)
    await b.advertise(blob)
    assert.deepEqual(await collect(c, blob), ['peer-1', 'peer-2'])
    assert.deepEqual(await collect(a, blob), ['peer-2'])
    assert.deepEqual(await collect(c, digestOf('other')), [])
    const [ref] = table.providers(blob)
    assert.deepEqual(ref, peer(1))
  })

  it('stops after limit and skips peers without addresses', async () => {
    const table = new MemoryRoutingTable()
    const reader = table.attach(peer(0))
    const silent = table.attach({ id: 'no-addrs', addrs: [] })
    await silent.advertise(blob)
    for (let n = 1; n <= 12; n++) await table.attach(peer(n)).advertise(blob)
    assert.equal((await collect(reader, blob)).length, 8, 'default limit is 8')
    assert.deepEqual(await collect(reader, blob, { limit: 3 }), ['peer-1', 'peer-2', 'peer-3'])
    assert.deepEqual(await collect(reader, blob, { limit: 0 }), [])
    assert.ok(!(await collect(reader, blob, { limit: 20 })).includes('no-addrs'))
  })

  it('rejects advertise on a lone node but keeps it scheduled and publishes it when a peer joins', async () => {
    const table = new MemoryRoutingTable()
    const a = table.attach(peer(1))
    await assert.rejects(a.advertise(blob), (err: unknown) => err instanceof NoPeersError && err.code === 'ERR_NO_PEERS')
    assert.deepEqual(a.advertised(), [blob])
    const b = table.attach(peer(2))
    assert.deepEqual(await collect(b, blob), ['peer-1'])
  })

  it('returns at once from lookup on a lone node', async () => {
    const table = new MemoryRoutingTable({ latencyMs: 1_000 })
    const a = table.attach(peer(1))
    const started = performance.now()
    assert.deepEqual(await collect(a, blob), [])
    assert.ok(performance.now() - started < 100)
  })

  it('withdraw is local bookkeeping: the record stays until it expires', async () => {
    const table = new MemoryRoutingTable()
    const [a, b] = [table.attach(peer(1)), table.attach(peer(2))]
    await a.advertise(blob)
    await a.withdraw(blob)
    assert.deepEqual(a.advertised(), [])
    assert.deepEqual(await collect(b, blob), ['peer-1'], 'stale record still visible')
    table.expire(blob)
    assert.deepEqual(await collect(b, blob), [])
    // advertising again after a withdraw revives the record
    await a.advertise(blob)
    table.expire()
    assert.deepEqual(await collect(b, blob), ['peer-1'])
  })

  it('keeps a departed node as a stale provider unless it forgets', async () => {
    const table = new MemoryRoutingTable()
    const [a, b, c] = [table.attach(peer(1)), table.attach(peer(2)), table.attach(peer(3))]
    await a.advertise(blob)
    await b.advertise(blob)
    a.detach()
    assert.deepEqual(await collect(c, blob), ['peer-1', 'peer-2'])
    table.expire()
    assert.deepEqual(await collect(c, blob), ['peer-2'])
    b.detach({ forget: true })
    assert.deepEqual(table.providers(blob), [])
    await assert.rejects(a.advertise(blob), RouterStoppedError)
    assert.throws(() => table.attach(peer(3)), /already attached/)
  })

  it('honours abort signals and the lookup deadline', async () => {
    const table = new MemoryRoutingTable({ latencyMs: 50 })
    const [a, b] = [table.attach(peer(1)), table.attach(peer(2))]
    const aborted = AbortSignal.abort(new Error('caller gave up'))
    await assert.rejects(a.advertise(blob, { signal: aborted }), /caller gave up/)
    await a.advertise(blob)
    assert.deepEqual(await collect(b, blob, { signal: aborted }), [])
    let started = performance.now()
    assert.deepEqual(await collect(b, blob, { timeoutMs: 20 }), [], 'deadline before the simulated round trip')
    assert.ok(performance.now() - started < 45)
    started = performance.now()
    assert.deepEqual(await collect(b, blob, { signal: AbortSignal.timeout(10) }), [])
    assert.ok(performance.now() - started < 45)
    assert.deepEqual(await collect(b, blob), ['peer-1'])
  })

  it('validates digests like the DHT router', async () => {
    const table = new MemoryRoutingTable()
    const [a] = [table.attach(peer(1)), table.attach(peer(2))]
    await assert.rejects(a.advertise('sha256:nope'), InvalidDigestError)
    await assert.rejects(collect(a, 'latest'), InvalidDigestError)
    await assert.rejects(a.knownNearest('latest', 16), InvalidDigestError)
  })

  it('names every attached node, itself included, nearest the key first', async () => {
    const table = new MemoryRoutingTable()
    const ids = await Promise.all(Array.from({ length: 5 }, async () => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()))
    const a = ids.map((id, n) => table.attach({ id, addrs: [`/ip4/10.0.0.${n + 1}/tcp/4001`] }))[0] as MemoryContentRouter
    assert.deepEqual(await a.knownNearest(blob, 16), rankByDistance(blob, ids))
    assert.deepEqual(await a.knownNearest(blob, 2), rankByDistance(blob, ids).slice(0, 2))
    const named = new MemoryRoutingTable()
    const [b] = [named.attach(peer(1)), named.attach(peer(2))]
    assert.deepEqual(await b.knownNearest(blob, 16), ['peer-1', 'peer-2'], 'plain names keep their attach order')
  })
})
