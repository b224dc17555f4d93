import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { afterEach, beforeEach, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { pino } from 'pino'
import { parseDigest } from '../../src/oci/digest.js'
import { BlobStore } from '../../src/store/blob-store.js'
import { HotChunks } from '../../src/transfer/chunks/hot.js'
import { chunkBounds, chunkHash, planChunks } from '../../src/transfer/chunks/plan.js'
import { OriginStripes } from '../../src/transfer/chunks/stripes.js'
import { Download } from '../../src/transfer/download.js'
import { Answered, type PeerSource, type SwarmHooks, runSwarmDownload } from '../../src/transfer/swarm-download.js'
import type { BlobLocator, BlobSource } from '../../src/transfer/types.js'

const log = pino({ level: 'silent' })
const CHUNK = 4096
const bytes = randomBytes(4 * CHUNK)
const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
const plan = planChunks(bytes.length, CHUNK)
const hashes = Array.from({ length: plan.count }, (_, i) => {
  const { start, end } = chunkBounds(plan, i)
  return chunkHash(bytes.subarray(start, end))
})
const locator: BlobLocator = { registry: 'r.test', name: 'a/b', digest: parseDigest(digest) }

/** origin: serves any range of `bytes`, counting the bytes it sent */
function origin(): BlobSource & { sent: number } {
  const o = {
    kind: 'origin',
    sent: 0,
    async open(_l: BlobLocator, options: { offset?: number; length?: number }) {
      const start = options.offset ?? 0
      const body = bytes.subarray(start, options.length === undefined ? undefined : start + options.length)
      o.sent += body.length
      return { size: bytes.length, offset: start, body: Readable.from([body]) }
    },
    async stat() {
      return bytes.length
    },
  }
  return o
}

/** a peer that answers but holds nothing, and fails every chunk request */
function emptyPeer(id: string): PeerSource {
  return {
    id,
    kind: 'peer',
    complete: false,
    lastGrowth: Date.now(),
    lastAnswer: Date.now(),
    started: true,
    refreshFailures: 0,
    exchanged: [],
    has: () => false,
    hashOf: () => undefined,
    poll() {
      ;(this as { lastAnswer: number }).lastAnswer = Date.now()
      ;(this as { lastGrowth: number }).lastGrowth = Date.now()
    },
    fetch: async () => {
      throw new Error('connection reset')
    },
  }
}

/** a peer that holds the whole blob and serves every chunk of it */
function holdingPeer(id: string): PeerSource {
  return {
    ...emptyPeer(id),
    complete: true,
    has: () => true,
    hashOf: (i) => hashes[i],
    fetch: async (i, _signal, into) => {
      const { start, end } = chunkBounds(plan, i)
      bytes.copy(into, 0, start, end)
      return into
    },
  }
}

function hooks(): SwarmHooks {
  return {
    chunkSize: CHUNK,
    maxRequests: 8,
    fetcherStallMs: 60_000,
    joined: () => true,
    discover: async () => undefined,
    fanout: async () => undefined,
    exchangedPeer: () => undefined,
    announce: () => {},
    penalise: () => {},
    completed: () => {},
  }
}

describe('swarm download', () => {
  let dir: string
  let store: BlobStore
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-swarm-download-'))
    store = await BlobStore.open(dir, log)
  })
  afterEach(async () => {
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })

  /** `settled`: the fan-out's fetchers as sources, once its asks are over (none: settled from the start) */
  async function run(
    sources: PeerSource[],
    stripes: OriginStripes | undefined,
    {
      noProgressMs,
      swarm = hooks(),
      download = new Download(digest, log),
      settled,
      answered,
      o = origin(),
    }: {
      noProgressMs?: number
      swarm?: SwarmHooks
      download?: Download
      settled?: Promise<unknown>
      answered?: Answered
      o?: ReturnType<typeof origin>
    } = {},
  ) {
    const writer = await store.createWriter(parseDigest(digest), bytes.length)
    download.begin(writer)
    try {
      await runSwarmDownload({
        locator,
        plan: { plan, table: hashes, sources, ...(stripes === undefined ? {} : { stripes }), ...(settled === undefined ? {} : { settled }), ...(answered === undefined ? {} : { answered }) },
        writer,
        download,
        origin: o,
        swarm,
        signal: AbortSignal.timeout(20_000),
        logger: log,
        ...(noProgressMs === undefined ? {} : { noProgressMs }),
      })
    } finally {
      await writer.abandon(false)
      await writer.close()
    }
    return o
  }

  test('a complete fetcher dropped as a failing source loses its origin share: the blob completes from origin', async () => {
    // the other fetcher owns chunks 0 and 2, holds every chunk, and fails every chunk request
    const other: PeerSource = { ...emptyPeer('other'), complete: true, has: () => true, hashOf: (i) => hashes[i] }
    const o = await run([other], new OriginStripes(['other', 'self'], 'self'))
    assert.equal(o.sent, bytes.length, 'every chunk came from origin in the end')
    assert.equal(store.stat(digest)?.size, bytes.length, 'committed')
  })

  test('a fan-out download begins on the first ranking: its own share comes from origin at once, and the other fetchers join once the asks settle, none judged before', async () => {
    // the other fetcher owns chunks 0 and 2 and holds the whole blob, but becomes a source only
    // when the asks are over, past several watchdog turns: dropped as unknown meanwhile, its
    // share would have gone to origin
    const other = holdingPeer('other')
    const o = origin()
    let sentWhenSettled = -1
    const answered = new Answered()
    const settled = sleep(1_500).then(() => {
      sentWhenSettled = o.sent
      answered.add(other)
    })
    await run([], new OriginStripes(['other', 'self'], 'self'), { settled, answered, o })
    assert.equal(sentWhenSettled, 2 * CHUNK, 'this node’s share (chunks 1 and 3) came from origin before the asks were over')
    assert.equal(o.sent, 2 * CHUNK, 'nothing more from origin: the other fetcher’s share came from it')
    assert.equal(store.stat(digest)?.size, bytes.length, 'committed')
  })

  test('a fetcher handed over as it answers is a source at once, while the asks are not over', async () => {
    const other = holdingPeer('other')
    const answered = new Answered()
    answered.add(other)
    const o = origin()
    // asks that never end: the blob comes from the fetcher that answered (it holds every chunk,
    // and origin takes only what no peer holds)
    await run([], new OriginStripes(['other', 'self'], 'self'), { settled: new Promise(() => {}), answered, o })
    assert.equal(o.sent, 0, 'every chunk came from the fetcher handed over')
    assert.equal(store.stat(digest)?.size, bytes.length, 'committed')
  })

  test('a download that takes no chunk from peers for long leaves them: origin fetches only the chunks still missing', async () => {
    // the other fetcher owns chunks 0 and 2, answers (so it is never given up), never gets a
    // chunk, and never fails; this node's own share (1 and 3) comes from origin
    const idle: PeerSource = { ...emptyPeer('idle'), fetch: () => new Promise(() => {}) }
    const started = Date.now()
    const o = await run([idle], new OriginStripes(['idle', 'self'], 'self'), { noProgressMs: 1_500 })
    assert.ok(Date.now() - started < 10_000)
    assert.equal(o.sent, bytes.length, 'each chunk came from origin once: the held ones were not fetched again')
    assert.equal(store.stat(digest)?.size, bytes.length, 'committed')
  })

  // The other fetcher owns chunks 0 and 2 and never gets one (its origin download stalls, or it
  // stopped answering); this node's share (1 and 3) comes from origin. With fetcherStall at 1 s,
  // the other's share must fall to this node within a few seconds, long before the safety net
  // (60 s without a chunk, past this test's deadline).
  const stuck: { title: string; peer: () => PeerSource }[] = [
    {
      title: 'answers its holdings polls but gains no chunk (stalled)',
      peer: () => ({
        ...emptyPeer('stuck'),
        poll() {
          ;(this as { lastAnswer: number }).lastAnswer = Date.now()
        },
      }),
    },
    { title: 'stops answering (silent)', peer: () => ({ ...emptyPeer('stuck'), poll() {} }) },
  ]
  for (const { title, peer } of stuck) {
    test(`an origin fetcher that ${title} is given up within a few stall times: its share falls to this node`, async () => {
      const swarm: SwarmHooks = { ...hooks(), fetcherStallMs: 1_000 }
      const started = Date.now()
      const o = await run([peer()], new OriginStripes(['stuck', 'self'], 'self'), { swarm })
      const seconds = (Date.now() - started) / 1000
      assert.ok(seconds < 8, `completed after ${seconds} s`)
      assert.equal(o.sent, bytes.length, 'the whole blob from origin, each chunk once')
      assert.equal(store.stat(digest)?.size, bytes.length, 'committed')
    })
  }

  for (const fanout of [true, false]) {
    test(`${fanout ? 'a fan-out download announces the blob once it is committed, spread' : 'a download with no fan-out announces the blob at its first chunk, at once'}`, async () => {
      const announces: { committed: boolean; spread: boolean }[] = []
      const swarm: SwarmHooks = {
        ...hooks(),
        announce: (_, options) => announces.push({ committed: store.stat(digest) !== undefined, spread: options?.spread === true }),
      }
      // this node fetches every chunk from origin (as the only fetcher, or with no fan-out)
      const o = await run([], fanout ? new OriginStripes(['self'], 'self') : undefined, { swarm })
      assert.equal(o.sent, bytes.length)
      assert.equal(store.stat(digest)?.size, bytes.length, 'committed')
      // once; spread only after a fan-out
      assert.deepEqual(announces, [{ committed: fanout, spread: fanout }], 'announced once')
    })
  }

  test('chunks just written are read from memory, by peers and by the stream, and hold the right bytes', async () => {
    const download = new Download(digest, log)
    const peerReads: Promise<Buffer>[] = []
    const swarm: SwarmHooks = {
      ...hooks(),
      // at the first chunk (no fan-out): a peer asks for it
      announce: () => {
        const into = Buffer.alloc(CHUNK)
        peerReads.push(download.readInto(0, into).then(() => into))
      },
    }
    // the stream reads every byte as the prefix grows (from memory while the chunks are hot),
    // but the last, which only a finished download gives (the blob service's part)
    const streamed = (async () => {
      const parts: Buffer[] = []
      for (let at = 0; at < bytes.length - 1; ) {
        if (download.readable() <= at) {
          if (download.failed !== undefined) throw download.failed
          await download.waitForProgress()
          continue
        }
        // (reads that straddle chunks, as a range request's would)
        const buf = Buffer.alloc(3000)
        const n = await download.readAt(buf, Math.min(buf.length, download.readable() - at), at)
        parts.push(buf.subarray(0, n))
        at += n
      }
      return Buffer.concat(parts)
    })()
    await run([], undefined, { swarm, download })
    assert.equal(peerReads.length, 1)
    assert.deepEqual(await peerReads[0], bytes.subarray(0, CHUNK), "the peer's chunk")
    assert.deepEqual(await streamed, bytes.subarray(0, -1), 'the streamed blob')
    assert.ok(download.reads.memory >= 2, `reads from memory: ${download.reads.memory}`)
    assert.equal(download.memory, undefined, 'no chunk stays in memory once the download is over')
  })
})

test('the hot chunk window keeps the last chunks written, gives back the older ones, and holds chunks ahead of the prefix up to its limit', () => {
  const released: number[] = []
  const hot = new HotChunks(1, 2, 2, (b) => released.push(b[0] as number))
  for (const i of [1, 2, 3]) hot.keep(i, Uint8Array.of(i))
  assert.deepEqual(released, [1], 'the oldest went back when a third came')
  assert.equal(hot.get(1), undefined)
  assert.deepEqual([hot.get(2)?.[0], hot.get(3)?.[0]], [2, 3])
  assert.equal(hot.hold(8, Uint8Array.of(8)), true)
  assert.equal(hot.hold(9, Uint8Array.of(9)), true)
  assert.equal(hot.hold(10, Uint8Array.of(10)), false, 'past the limit: not held')
  assert.equal(hot.get(9)?.[0], 9, 'held chunks are looked up too')
  assert.equal(hot.unhold(9)?.[0], 9)
  assert.equal(hot.get(9), undefined, 'unheld: the caller has it')
  assert.equal(hot.hold(10, Uint8Array.of(10)), true, 'room again')
  assert.equal(hot.heldPeakBytes, 2)
  hot.clear()
  assert.deepEqual(released, [1, 2, 3], 'the kept ones go back; the held ones are dropped')
  assert.equal(hot.get(3), undefined)
  assert.equal(hot.get(8), undefined)
})
