import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, test } from 'node:test'
import { pino } from 'pino'
import { MemoryRoutingTable } from '../../src/routing/memory.js'
import type { PeerRef } from '../../src/routing/types.js'
import { adoptTable, discoverPeers } from '../../src/swarm/discover.js'
import { PeerPenalties } from '../../src/swarm/penalties.js'
import type { PeerBlobInfo, PeerChunkClient } from '../../src/swarm/types.js'
import { chunkBounds, chunkHash, planChunks } from '../../src/transfer/chunks/plan.js'

const CHUNK = 1024
const DIGEST = `sha256:${'c'.repeat(64)}`
const log = pino({ level: 'silent' })

function tableOf(bytes: Buffer): string[] {
  const plan = planChunks(bytes.length, CHUNK)
  return Array.from({ length: plan.count }, (_, i) => {
    const { start, end } = chunkBounds(plan, i)
    return chunkHash(bytes.subarray(start, end))
  })
}

class FakeClient implements PeerChunkClient {
  infos = new Map<string, PeerBlobInfo | 'hang' | 'error'>()
  constructor(private readonly bytes: Buffer) {}
  async info(peer: PeerRef, _d: string, o: { signal: AbortSignal }): Promise<PeerBlobInfo | undefined> {
    const v = this.infos.get(peer.id)
    if (v === 'hang') {
      // AbortSignal.timeout does not keep the event loop alive; a hanging socket would
      const keepAlive = setInterval(() => {}, 1000)
      return new Promise((_, reject) =>
        o.signal.addEventListener('abort', () => {
          clearInterval(keepAlive)
          reject(o.signal.reason)
        }),
      )
    }
    if (v === 'error') throw new Error('refused')
    return v
  }
  async fetchChunk(_p: PeerRef, _d: string, i: number, o: { into: Buffer }): Promise<void> {
    const { start, end } = chunkBounds(planChunks(this.bytes.length, CHUNK), i)
    o.into.set(this.bytes.subarray(start, end))
  }
}

function setup(n: number): { routers: ReturnType<MemoryRoutingTable['attach']>[]; peers: PeerRef[] } {
  const table = new MemoryRoutingTable()
  const peers = Array.from({ length: n }, (_, i) => ({ id: `peer${i}`, addrs: [`/ip4/127.0.0.1/tcp/${4000 + i}`] }))
  return { routers: peers.map((p) => table.attach(p)), peers }
}

describe('swarm discovery', () => {
  test('finds the holders, adopts their table, skips liars, penalised and silent peers, within the deadline', async () => {
    const bytes = randomBytes(10 * CHUNK)
    const good = tableOf(bytes)
    const { routers } = setup(6)
    const client = new FakeClient(bytes)
    const have = good.map(() => true)
    client.infos.set('peer1', { size: bytes.length, chunkSize: CHUNK, table: good, have })
    client.infos.set('peer2', { size: bytes.length, chunkSize: CHUNK, table: good.map((h, i) => (i < 5 ? h : null)), have: have.map((_, i) => i < 5) })
    client.infos.set('peer3', { size: bytes.length, chunkSize: CHUNK, table: good.map((h, i) => (i === 3 ? 'f'.repeat(64) : h)), have })
    client.infos.set('peer4', 'hang')
    client.infos.set('peer5', { size: bytes.length, chunkSize: CHUNK, table: good, have })
    for (const i of [1, 2, 3, 4, 5]) await routers[i]!.advertise(DIGEST)
    const penalties = new PeerPenalties(60_000)
    penalties.penalise('peer5')
    const t0 = Date.now()
    const plan = await discoverPeers(DIGEST, {
      router: routers[0]!,
      client,
      penalties,
      logger: log,
      chunkSize: CHUNK,
      lookupTimeoutMs: 200,
      infoTimeoutMs: 300,
      maxPeers: 8,
      signal: AbortSignal.timeout(5000),
    })
    assert.ok(Date.now() - t0 < 1500)
    assert.ok(plan)
    assert.equal(plan.plan.size, bytes.length)
    assert.deepEqual(plan.table, good)
    const ids = plan.sources.map((s) => s.id).sort()
    // peer3's table contradicts (unless it answered first, then the others would be refused)
    assert.ok(ids.includes('peer1') && ids.includes('peer2'), ids.join())
    assert.ok(!ids.includes('peer4') && !ids.includes('peer5'))
    const p2 = plan.sources.find((s) => s.id === 'peer2')!
    assert.equal(p2.has(4), true)
    assert.equal(p2.has(5), false)
    const chunk = await plan.sources[0]!.fetch(2, AbortSignal.timeout(1000), Buffer.alloc(CHUNK))
    assert.deepEqual(Buffer.from(chunk), bytes.subarray(2 * CHUNK, 3 * CHUNK))
  })

  test('a lone node or an unknown blob: undefined at once', async () => {
    const single = new MemoryRoutingTable().attach({ id: 'alone', addrs: ['/ip4/127.0.0.1/tcp/1'] })
    const opts = {
      router: single,
      client: new FakeClient(Buffer.alloc(0)),
      penalties: new PeerPenalties(1000),
      logger: log,
      chunkSize: CHUNK,
      lookupTimeoutMs: 2000,
      infoTimeoutMs: 2000,
      maxPeers: 8,
      signal: AbortSignal.timeout(5000),
    }
    const t0 = Date.now()
    assert.equal(await discoverPeers(DIGEST, opts), undefined)
    const { routers } = setup(3)
    assert.equal(await discoverPeers(DIGEST, { ...opts, router: routers[0]!, lookupTimeoutMs: 100 }), undefined)
    assert.ok(Date.now() - t0 < 1000)
  })

  test('adoptTable refuses holders without hashes and contradictions', () => {
    const t: (string | undefined)[] = [undefined, undefined]
    const h = 'a'.repeat(64)
    assert.ok(adoptTable(t, { size: 2, chunkSize: 1, table: [h, null], have: [true, false] }))
    assert.equal(t[0], h)
    assert.ok(!adoptTable(t, { size: 2, chunkSize: 1, table: ['b'.repeat(64), null], have: [true, false] }))
    assert.ok(!adoptTable(t, { size: 2, chunkSize: 1, table: [h, null], have: [true, true] }))
  })

  test('penalties expire', () => {
    let now = 0
    const p = new PeerPenalties(100, () => now)
    p.penalise('x')
    assert.ok(p.isPenalised('x'))
    now = 101
    assert.ok(!p.isPenalised('x'))
    assert.equal(p.count(), 0)
  })
})
