import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { ChunkBuffers } from '../../src/transfer/chunks/buffers.js'
import { ChunkTable, chunkBounds, chunkHash, planChunks } from '../../src/transfer/chunks/plan.js'
import { ChunkScheduler, type ChunkSource, NoSourceError, OriginTurns, RequestSlots } from '../../src/transfer/chunks/scheduler.js'

const CHUNK = 1024

function blob(chunks: number, tail = 0): { bytes: Buffer; table: ChunkTable } {
  const bytes = randomBytes(chunks * CHUNK + tail)
  const plan = planChunks(bytes.length, CHUNK)
  const hashes = Array.from({ length: plan.count }, (_, i) => {
    const { start, end } = chunkBounds(plan, i)
    return chunkHash(bytes.subarray(start, end))
  })
  return { bytes, table: new ChunkTable(plan, hashes) }
}

interface FakeOpts {
  kind?: 'peer' | 'origin'
  holds?: (i: number) => boolean
  delayMs?: number | ((i: number) => number)
  corrupt?: boolean
  failAll?: boolean
  hang?: boolean
  /** answer in the scheduler's buffer (as the real sources do) */
  fill?: boolean
  /** the first this many requests answer 'busy' (an upload cap), with a retry delay */
  busy?: number
}

class FakeSource implements ChunkSource {
  readonly kind: 'peer' | 'origin'
  watch?: (wake: () => void) => void
  poll?: () => void
  requests = 0
  served = 0
  constructor(
    readonly id: string,
    private readonly bytes: Buffer,
    private readonly o: FakeOpts = {},
  ) {
    this.kind = o.kind ?? 'peer'
  }
  has(i: number): boolean {
    return this.o.holds ? this.o.holds(i) : true
  }
  async fetch(i: number, signal: AbortSignal, into: Buffer, _onBytes?: (bytes: number) => void): Promise<Uint8Array> {
    this.requests++
    const delay = typeof this.o.delayMs === 'function' ? this.o.delayMs(i) : (this.o.delayMs ?? 1)
    if (this.o.hang) await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)))
    await sleep(delay, undefined, { signal })
    if (this.o.failAll) throw new Error('connection reset')
    if (this.requests <= (this.o.busy ?? 0)) throw Object.assign(new Error('busy'), { retryAfterMs: 20 })
    const plan = planChunks(this.bytes.length, CHUNK)
    const { start, end } = chunkBounds(plan, i)
    const out = this.o.fill ? into : Buffer.from(this.bytes.subarray(start, end))
    if (this.o.fill) this.bytes.copy(into, 0, start, end)
    if (this.o.corrupt) out[0] = (out[0] as number) ^ 1
    this.served++
    return out
  }
}

async function download(
  table: ChunkTable,
  peers: FakeSource[],
  origin?: FakeSource,
  extra: Partial<ConstructorParameters<typeof ChunkScheduler>[0]> = {},
): Promise<{ out: Buffer; result: Awaited<ReturnType<ChunkScheduler['run']>>; bad: string[] }> {
  const out = Buffer.alloc(table.plan.size)
  const bad: string[] = []
  const s = new ChunkScheduler({
    plan: table.plan,
    verify: (i, b) => table.verify(i, b),
    accept: async (i, b) => {
      Buffer.from(b).copy(out, chunkBounds(table.plan, i).start)
    },
    peers,
    origin,
    onBadPeer: (p) => bad.push(p),
    requestTimeoutMs: 500,
    hedgeAfterMs: 100,
    ...extra,
  })
  const result = await s.run(AbortSignal.timeout(20_000))
  return { out, result, bad }
}

describe('chunk plan and table', () => {
  test('bounds cover the blob exactly', () => {
    const plan = planChunks(10 * CHUNK + 5, CHUNK)
    assert.equal(plan.count, 11)
    assert.deepEqual(chunkBounds(plan, 10), { start: 10 * CHUNK, end: 10 * CHUNK + 5 })
    assert.equal(planChunks(0, CHUNK).count, 1)
    assert.throws(() => chunkBounds(plan, 11))
  })
  test('a table refuses bytes of the wrong length or hash', () => {
    const { bytes, table } = blob(2)
    assert.ok(table.verify(0, bytes.subarray(0, CHUNK)))
    assert.ok(!table.verify(0, bytes.subarray(0, CHUNK - 1)))
    assert.ok(!table.verify(1, bytes.subarray(0, CHUNK)))
    assert.throws(() => new ChunkTable(table.plan, ['x', 'y']))
  })
})

describe('chunk buffers', () => {
  test('reused once given back; only its own, never twice', () => {
    const pool = new ChunkBuffers(CHUNK, 2)
    const a = pool.take(CHUNK)
    const short = pool.take(10)
    assert.equal(short.length, 10)
    pool.give(a)
    assert.equal(pool.take(CHUNK).buffer, a.buffer)
    pool.give(short)
    assert.throws(() => pool.give(short), /twice/)
    const foreign = Buffer.alloc(CHUNK)
    pool.give(foreign)
    assert.notEqual(pool.take(CHUNK).buffer, foreign.buffer)
    assert.equal(pool.take(CHUNK * 2).length, CHUNK * 2)
  })
})

/** a pool that counts the buffers out */
class CountingBuffers extends ChunkBuffers {
  out = new Set<ArrayBufferLike>()
  override take(length: number): Buffer {
    const b = super.take(length)
    this.out.add(b.buffer)
    return b
  }
  override give(buffer: Uint8Array): void {
    this.out.delete(buffer.buffer)
    super.give(buffer)
  }
}

describe('chunk scheduler', () => {
  test('no end game while a chunk is still unheld: a peer with nothing free for it waits for the hedge delay', async () => {
    const { bytes, table } = blob(3)
    const t0 = Date.now()
    const a = new FakeSource('a', bytes, { holds: (i) => i === 0 || (i === 2 && Date.now() - t0 > 400), delayMs: 200 })
    const b = new FakeSource('b', bytes, { holds: (i) => i === 0, delayMs: 1 })
    const c = new FakeSource('c', bytes, { holds: (i) => i === 1, delayMs: 300 })
    const alive = setInterval(() => {}, 50) // the scheduler's own timer does not keep the process up
    const { out } = await download(table, [a, b, c], undefined, { hedgeAfterMs: 1_000, requestTimeoutMs: 5_000, mayWait: () => true, pollMs: 20 }).finally(() =>
      clearInterval(alive),
    )
    assert.ok(out.equals(bytes))
    assert.equal(b.requests, 0, 'b did not duplicate the chunk a was fetching')
  })

  /**
   * The end game's setting: a holds chunks 0 and 3, b chunk 1, c chunks 2 and 3, one request
   * each at a time, 50 ms a chunk but a's chunk 3 (`last` ms). a takes 0, b 1, c 2; at 50 ms a
   * takes 3, and every missing chunk is in flight: c is idle, and holds chunk 3 too.
   */
  async function endGame(last: number): Promise<{ a: FakeSource; c: FakeSource; ms: number; result: Awaited<ReturnType<ChunkScheduler['run']>> }> {
    const { bytes, table } = blob(4)
    const a = new FakeSource('a', bytes, { holds: (i) => i === 0 || i === 3, delayMs: (i) => (i === 3 ? last : 50) })
    const b = new FakeSource('b', bytes, { holds: (i) => i === 1, delayMs: 50 })
    const c = new FakeSource('c', bytes, { holds: (i) => i === 2 || i === 3, delayMs: 50 })
    const t0 = Date.now()
    const { out, result } = await download(table, [a, b, c], undefined, { maxInflightPerPeer: 1, hedgeAfterMs: 5_000, requestTimeoutMs: 10_000, pollMs: 10 })
    assert.ok(out.equals(bytes))
    return { a, c, ms: Date.now() - t0, result }
  }

  test('end game: a straggler younger than chunks usually take is not copied', async () => {
    const { a, c, result } = await endGame(25)
    assert.equal(a.requests + c.requests, 3, 'chunk 3 asked of a alone')
    assert.deepEqual([result.endGame, result.hedged, result.lost], [0, 0, 0])
  })

  test('end game: a straggler that outlives the usual chunk time is copied, long before the hedge delay', async () => {
    const { c, ms, result } = await endGame(2_000)
    assert.equal(c.requests, 2, 'c copied chunk 3')
    assert.deepEqual([result.endGame, result.hedged, result.lost], [1, 0, 1], 'one end-game copy; the first request lost')
    assert.ok(ms < 1_000, `done without waiting for the straggler, in ${ms} ms`)
  })

  test('request slots bound the requests in flight over several downloads, and the end game stays small', async () => {
    const slots = new RequestSlots(4)
    let inflight = 0
    let most = 0
    const counted = (bytes: Buffer, id: string): FakeSource => {
      const source = new FakeSource(id, bytes, { delayMs: 20 })
      const fetch = source.fetch.bind(source)
      source.fetch = async (i, signal, into) => {
        most = Math.max(most, ++inflight)
        try {
          return await fetch(i, signal, into)
        } finally {
          inflight--
        }
      }
      return source
    }
    const one = blob(12)
    const two = blob(12)
    const runs = [one, two].map(({ bytes, table }) =>
      download(
        table,
        Array.from({ length: 10 }, (_, i) => counted(bytes, `p${i}`)),
        undefined,
        { slots, hedgeAfterMs: 1_000, requestTimeoutMs: 5_000 },
      ),
    )
    const alive = setInterval(() => {}, 50) // a download waiting for a slot has only the scheduler's unref'd timer
    const results = await Promise.all(runs).finally(() => clearInterval(alive))
    assert.ok(results[0]!.out.equals(one.bytes) && results[1]!.out.equals(two.bytes))
    // the cap, plus at most one fair share (4 ÷ 2 downloads) for a download the other crowds out
    assert.ok(most <= 6, `at most 6 requests in flight, saw ${most}`)
    assert.equal(slots.inUse, 0, 'every slot given back')
    // 20 peer slots per download and 12 chunks: without the cap the end game asks for nearly every chunk twice
    const wasted = results[0]!.result.wasted + results[1]!.result.wasted
    assert.ok(wasted <= 6, `few duplicate requests, saw ${wasted}`)
  })

  test('a download keeps its fair share of slots while another holds them all with hung requests', async () => {
    const slots = new RequestSlots(2)
    const stuck = blob(4)
    // the first download takes both slots, and its peer never answers
    const first = download(stuck.table, [new FakeSource('hangs', stuck.bytes, { hang: true })], undefined, { slots, requestTimeoutMs: 60_000, hedgeAfterMs: 60_000 })
    first.catch(() => {})
    await sleep(20)
    assert.equal(slots.inUse, 2)
    const { bytes, table } = blob(6)
    const alive = setInterval(() => {}, 50)
    const { out } = await download(table, [new FakeSource('good', bytes, { delayMs: 2 })], undefined, { slots }).finally(() => clearInterval(alive))
    assert.ok(out.equals(bytes), 'the second download completed on its share')
  })

  test('origin turns: taken while free, then in line; a turn given back goes to the first in line', async () => {
    const turns = new OriginTurns(1)
    const woken: string[] = []
    const a = (): void => {
      woken.push('a')
    }
    const b = (): void => {
      woken.push('b')
      turns.take(b)
    }
    assert.ok(turns.take(a))
    assert.equal(turns.take(b), false, 'none free: b waits in line')
    turns.give()
    assert.equal(turns.take(a), false, 'the giver does not take the turn back ahead of the line')
    await Promise.resolve()
    assert.deepEqual(woken, ['b'], 'b was woken and took it; a is in line behind it')
    assert.equal(turns.inUse, 1)
    turns.leave(a)
    turns.give()
    await Promise.resolve()
    assert.deepEqual(woken, ['b'], 'a left the line: nobody is woken')
    assert.equal(turns.inUse, 0)
    assert.ok(turns.take(a), 'free, and nobody in line')
    assert.throws(() => new OriginTurns(0), RangeError)
  })

  test('origin turns bound the origin requests of several downloads, which take origin in turn', async () => {
    const turns = new OriginTurns(1)
    let inflight = 0
    let most = 0
    const order: string[] = []
    const origin = (bytes: Buffer, id: string): FakeSource => {
      const source = new FakeSource('origin', bytes, { kind: 'origin', delayMs: 3 })
      const fetch = source.fetch.bind(source)
      source.fetch = async (i, signal, into) => {
        most = Math.max(most, ++inflight)
        order.push(id)
        try {
          return await fetch(i, signal, into)
        } finally {
          inflight--
        }
      }
      return source
    }
    const blobs = [blob(4), blob(4)]
    const alive = setInterval(() => {}, 50)
    // no periodic pump in the test's time: a download waiting for a turn moves only when woken
    const results = await Promise.all(
      blobs.map(({ bytes, table }, k) => download(table, [], origin(bytes, `d${k}`), { originTurns: turns, maxInflightOrigin: 4, pollMs: 60_000, hedgeAfterMs: 240_000 })),
    ).finally(() => clearInterval(alive))
    assert.ok(results.every((r, k) => r.out.equals(blobs[k]!.bytes)), 'both blobs complete and exact')
    assert.equal(most, 1, 'one origin request in flight at a time over both downloads')
    assert.equal(turns.inUse, 0, 'every turn given back')
    // (d0 queues for its second chunk before d1 starts, so the line runs d0, d0, d1, d0, d1…)
    const switches = order.filter((id, i) => i > 0 && id !== order[i - 1]).length
    assert.ok(switches >= 5, `the downloads took origin in turn: ${order.join(' ')}`)
  })

  test('a chunk of a sixteenth of the chunk size or less takes no origin turn: a small blob does not wait behind another download', { timeout: 10_000 }, async () => {
    const turns = new OriginTurns(1)
    const holder = (): void => {}
    assert.ok(turns.take(holder), 'another download holds the only turn')
    // a 40-byte blob: one chunk of 40 bytes, under a sixteenth of the 1,024-byte chunk size
    const small = blob(0, 40)
    const origin = new FakeSource('origin', small.bytes, { kind: 'origin' })
    const alive = setInterval(() => {}, 50)
    const { out } = await download(small.table, [], origin, { originTurns: turns, pollMs: 60_000 }).finally(() => clearInterval(alive))
    assert.ok(out.equals(small.bytes), 'fetched while the turn was still held')
    assert.equal(turns.inUse, 1, 'no turn taken or given back by it')
    // a full chunk still waits for a turn
    const big = blob(1)
    const waiting = download(big.table, [], new FakeSource('origin', big.bytes, { kind: 'origin' }), { originTurns: turns, pollMs: 60_000 })
    let done = false
    void waiting.then(() => {
      done = true
    })
    await sleep(100)
    assert.equal(done, false, 'a whole chunk waits in line')
    turns.give()
    assert.ok((await waiting).out.equals(big.bytes))
  })

  test('an origin request that stops receiving gives its turn back; one still receiving keeps it', async () => {
    const turns = new OriginTurns(1)
    const idle = { originTurns: turns, maxInflightOrigin: 1, originTurnIdleMs: 150, pollMs: 20, requestTimeoutMs: 60_000, hedgeAfterMs: 60_000 }
    const alive = setInterval(() => {}, 50)
    try {
      // a flow that trickles a byte every 50 ms for 0.6 s keeps its turn all along
      const slow = blob(1)
      const trickle = new FakeSource('origin', slow.bytes, { kind: 'origin' })
      const serve = trickle.fetch.bind(trickle)
      let trickleDone = 0
      trickle.fetch = async (i, signal, into, onBytes) => {
        for (let k = 0; k < 12; k++) {
          await sleep(50, undefined, { signal })
          onBytes?.(1)
        }
        const out = await serve(i, signal, into)
        trickleDone = Date.now()
        return out
      }
      const first = download(slow.table, [], trickle, idle)
      await sleep(10)
      const next = blob(2)
      const waiting = new FakeSource('origin', next.bytes, { kind: 'origin' })
      const wait = waiting.fetch.bind(waiting)
      let waitingFrom = 0
      waiting.fetch = (i, signal, into) => {
        waitingFrom ||= Date.now()
        return wait(i, signal, into)
      }
      const { out } = await download(next.table, [], waiting, idle)
      await first
      assert.ok(out.equals(next.bytes))
      assert.ok(trickleDone > 0 && waitingFrom >= trickleDone, 'the second download began on origin only once the moving flow ended')
      assert.equal(turns.inUse, 0)

      // a flow that hung: the other download's origin requests go on after the idle time
      const stuck = blob(2)
      const hung = new FakeSource('origin', stuck.bytes, { kind: 'origin', hang: true })
      const stop = new AbortController()
      const idled: number[] = []
      const s = new ChunkScheduler({
        plan: stuck.table.plan,
        verify: (i, b) => stuck.table.verify(i, b),
        accept: async () => {},
        peers: [],
        origin: hung,
        onOriginIdle: (i) => idled.push(i),
        ...idle,
      })
      const hanging = s.run(stop.signal).catch((err: Error) => err)
      await sleep(10)
      assert.equal(turns.inUse, 1, 'the hung request holds the turn')
      const started = Date.now()
      const other = blob(3)
      const done = await download(other.table, [], new FakeSource('origin', other.bytes, { kind: 'origin' }), idle)
      assert.ok(done.out.equals(other.bytes), 'the other download completed from origin')
      const waited = Date.now() - started
      assert.ok(waited >= 100 && waited < 2_000, `it waited about the idle time, ${waited} ms`)
      assert.equal(hung.requests, 1, 'the hung download started no second origin request')
      assert.deepEqual(idled, [0], 'reported once, for its chunk')
      stop.abort(new Error('test over'))
      assert.equal(((await hanging) as Error).message, 'test over')
      assert.equal(turns.inUse, 0, 'the hung request, given up, did not give its turn back twice')
    } finally {
      clearInterval(alive)
    }
  })

  test('a peer dropped for failing can be taken back; one dropped for bad bytes cannot', async () => {
    const { bytes, table } = blob(6)
    const liar = new FakeSource('liar', bytes, { corrupt: true })
    const broken = new FakeSource('broken', bytes, { failAll: true })
    const good = new FakeSource('good', bytes, { delayMs: 5 })
    const s = new ChunkScheduler({
      plan: table.plan,
      verify: (i, b) => table.verify(i, b),
      accept: async () => {},
      peers: [liar, broken, good],
      maxPeerFailures: 1,
      requestTimeoutMs: 500,
      hedgeAfterMs: 100,
    })
    await s.run(AbortSignal.timeout(20_000))
    assert.equal(s.uses('liar') || s.uses('broken'), false, 'both dropped')
    assert.equal(s.readmit(liar), false)
    assert.equal(s.uses('liar'), false)
    assert.equal(s.readmit(broken), true)
    assert.equal(s.uses('broken'), true)
  })

  test('a busy peer is asked again later, not dropped as failing', async () => {
    const { bytes, table } = blob(4)
    const busy = new FakeSource('busy', bytes, { busy: 6 })
    const alive = setInterval(() => {}, 50) // the scheduler's own timer does not keep the process up
    const { out, result } = await download(table, [busy], undefined, { maxPeerFailures: 2 }).finally(() => clearInterval(alive))
    assert.ok(out.equals(bytes))
    assert.equal(result.bySource.get('busy'), bytes.length, 'every chunk from the busy peer')
    assert.ok(busy.requests > 6)
  })

  test('a source whose holdings grow wakes the scheduler: its new chunks are asked for at once, not at the next timed pump', async () => {
    const { bytes, table } = blob(4)
    let holds = false
    const grower = new FakeSource('grower', bytes, { holds: () => holds })
    let wake: (() => void) | undefined
    grower.watch = (w) => {
      wake = w
    }
    setTimeout(() => {
      holds = true
      wake?.()
    }, 50)
    const started = Date.now()
    // no timed pump within the test (pollMs and the hedge delay are a minute and more)
    const { out, result } = await download(table, [grower], undefined, { pollMs: 60_000, hedgeAfterMs: 240_000, mayWait: () => true })
    assert.ok(out.equals(bytes))
    assert.equal(result.bySource.get('grower'), bytes.length)
    assert.ok(Date.now() - started < 5_000, `took ${Date.now() - started} ms`)
  })

  test('a source that learns its holdings by asking is polled on every pump; has() only looks up', async () => {
    const { bytes, table } = blob(4)
    let holds = false
    let polls = 0
    let asked = 0
    const asker = new FakeSource('asker', bytes, {
      holds: () => {
        asked++
        return holds
      },
    })
    // the answer to the third poll names every chunk (the timed pump polls: every 20 ms here)
    asker.poll = () => {
      if (++polls === 3) holds = true
    }
    const alive = setInterval(() => {}, 1_000) // (the scheduler's timer does not hold the process open)
    const { out, result } = await download(table, [asker], undefined, { pollMs: 20, hedgeAfterMs: 240_000, mayWait: () => true }).finally(() => clearInterval(alive))
    assert.ok(out.equals(bytes))
    assert.equal(result.bySource.get('asker'), bytes.length)
    assert.ok(polls >= 3, `${polls} polls`)
    assert.ok(asked > polls, 'has() is asked per chunk, more often than the source is polled')
  })

  test('every buffer comes back: accepted, refused, failed, hedged and wasted fetches alike', async () => {
    const { bytes, table } = blob(30, 5)
    const pool = new CountingBuffers(CHUNK, 4)
    const peers = [
      new FakeSource('good', bytes, { fill: true, delayMs: 2 }),
      new FakeSource('slow', bytes, { fill: true, delayMs: (i) => (i % 3 === 0 ? 300 : 2) }),
      new FakeSource('liar', bytes, { fill: true, corrupt: true }),
      new FakeSource('broken', bytes, { fill: true, failAll: true }),
    ]
    const out = Buffer.alloc(bytes.length)
    const result = await new ChunkScheduler({
      plan: table.plan,
      verify: (i, b) => table.verify(i, b),
      accept: async (i, b) => {
        Buffer.from(b).copy(out, i * CHUNK)
        pool.give(b)
      },
      peers,
      buffers: pool,
      requestTimeoutMs: 500,
      hedgeAfterMs: 50,
    }).run(AbortSignal.timeout(20_000))
    assert.ok(out.equals(bytes), 'reassembled exactly from reused buffers')
    assert.ok(result.wasted > 0, 'some fetches were wasted')
    // the slow peer's hedged requests finish after the run: give them time to come back
    await sleep(400)
    assert.equal(pool.out.size, 0, 'buffers still out')
  })

  test('spreads a blob over several peers and reassembles it exactly', async () => {
    const { bytes, table } = blob(40, 77)
    const peers = [1, 2, 3].map((n) => new FakeSource(`p${n}`, bytes, { delayMs: 2 }))
    const { out, result } = await download(table, peers)
    assert.ok(out.equals(bytes))
    for (const p of peers) assert.ok((result.bySource.get(p.id) ?? 0) > 0, `${p.id} contributed`)
  })

  test('rarest first: a chunk only one peer holds is fetched early', async () => {
    const { bytes, table } = blob(20)
    const order: number[] = []
    const common = new FakeSource('common', bytes, { holds: (i) => i !== 19, delayMs: 5 })
    const rare = new FakeSource('rare', bytes, { delayMs: 5 })
    const out = Buffer.alloc(bytes.length)
    await new ChunkScheduler({
      plan: table.plan,
      verify: (i, b) => table.verify(i, b),
      accept: async (i, b) => {
        order.push(i)
        Buffer.from(b).copy(out, i * CHUNK)
      },
      peers: [common, rare],
      maxInflightPerPeer: 1,
    }).run(AbortSignal.timeout(10_000))
    assert.ok(out.equals(bytes))
    assert.ok(order.indexOf(19) < 4, `chunk 19 came at position ${order.indexOf(19)}`)
  })

  test('a peer serving corrupt chunks is dropped and reported; the blob completes from others', async () => {
    const { bytes, table } = blob(30)
    const liar = new FakeSource('liar', bytes, { corrupt: true, delayMs: 1 })
    const honest = new FakeSource('honest', bytes, { delayMs: 3 })
    const { out, result, bad } = await download(table, [liar, honest])
    assert.ok(out.equals(bytes))
    assert.deepEqual(bad, ['liar'])
    assert.equal(result.bySource.get('liar'), undefined)
    assert.ok(liar.requests <= 2, `liar got ${liar.requests} requests`)
  })

  test('a dead peer: its chunks move to others (and origin) quickly', async () => {
    const { bytes, table } = blob(20)
    const dead = new FakeSource('dead', bytes, { failAll: true })
    const slowButAlive = new FakeSource('alive', bytes, { delayMs: 2 })
    const t0 = Date.now()
    const { out } = await download(table, [dead, slowButAlive])
    assert.ok(out.equals(bytes))
    assert.ok(dead.requests <= 4)
    assert.ok(Date.now() - t0 < 3000)
  })

  test('a hanging peer is hedged: the straggler chunk also goes elsewhere', async () => {
    const { bytes, table } = blob(10)
    const hang = new FakeSource('hang', bytes, { hang: true })
    const ok = new FakeSource('ok', bytes, { delayMs: 2 })
    const t0 = Date.now()
    const { out, result } = await download(table, [hang, ok], undefined, { requestTimeoutMs: 5_000, hedgeAfterMs: 50 })
    assert.ok(out.equals(bytes))
    assert.ok(result.hedged + result.endGame > 0 && result.lost > 0, 'the hanging requests were copied, and lost')
    assert.ok(Date.now() - t0 < 2000, 'did not wait for the request timeout')
  })

  test('origin takes only what no peer holds, unless peers are too slow', async () => {
    const { bytes, table } = blob(20)
    const half = new FakeSource('half', bytes, { holds: (i) => i < 10, delayMs: 2 })
    const origin = new FakeSource('origin', bytes, { kind: 'origin', delayMs: 2 })
    const { out, result } = await download(table, [half], origin)
    assert.ok(out.equals(bytes))
    assert.equal(result.bySource.get('origin'), 10 * CHUNK)
    assert.equal(result.bySource.get('half'), 10 * CHUNK)
  })

  test('no peers at all: origin alone', async () => {
    const { bytes, table } = blob(9, 3)
    const origin = new FakeSource('origin', bytes, { kind: 'origin' })
    const { out } = await download(table, [], origin)
    assert.ok(out.equals(bytes))
  })

  test('nothing can serve: rejects fast with NoSourceError', async () => {
    const { bytes, table } = blob(4)
    const partial = new FakeSource('partial', bytes, { holds: (i) => i < 2 })
    await assert.rejects(download(table, [partial]), NoSourceError)
  })

  test('simulation: 200 peers with random holdings, latency and 10% liars', async () => {
    const { bytes, table } = blob(64)
    const peers: FakeSource[] = []
    for (let n = 0; n < 200; n++) {
      const holds = new Set(Array.from({ length: 64 }, (_, i) => i).filter(() => Math.random() < 0.3))
      peers.push(new FakeSource(`p${n}`, bytes, { holds: (i) => holds.has(i), delayMs: () => 1 + Math.floor(Math.random() * 10), corrupt: n % 10 === 0 }))
    }
    const origin = new FakeSource('origin', bytes, { kind: 'origin', delayMs: 5 })
    const { out, bad, result } = await download(table, peers, origin)
    assert.ok(out.equals(bytes))
    for (const id of bad) assert.equal(Number(id.slice(1)) % 10, 0, 'only liars are reported')
    const fromOrigin = result.bySource.get('origin') ?? 0
    assert.ok(fromOrigin < bytes.length / 4, `origin served ${fromOrigin} of ${bytes.length}`)
  })
})
