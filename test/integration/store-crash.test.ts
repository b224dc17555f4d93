/**
 * Crash safety: the daemon is killed with SIGKILL at random moments while many concurrent pulls
 * run (downloads, commits, evictions under a tight quota, index writes), then restarted on the
 * same data dir. After every restart each blob it holds is pulled back and must hash to its
 * digest, and no temp or orphan file may remain: every file under blobs/ is an indexed blob and
 * every file under tmp/ a resumable partial download the daemon knows of.
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, before, test } from 'node:test'
import { type BlobSpec, pushBlob } from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { prng } from '../helpers/random.js'
import { type Shoal, startShoal } from '../helpers/shoal.js'
import { startThrottleProxy, type ThrottleProxy } from '../helpers/throttle.js'

const ROUNDS = 12
const BLOBS = 24
const CONCURRENT_PULLS = 12
const QUOTA = 24 * 1024 * 1024

let origin: OriginRegistry
let proxy: ThrottleProxy
let dataDir: string
let blobs: BlobSpec[]
const shoals: Shoal[] = []

before(async () => {
  origin = await startOriginRegistry()
  proxy = await startThrottleProxy(origin.port, 200 * 1024 * 1024)
  dataDir = await mkdtemp(join(tmpdir(), 'shoal-crash-'))
  blobs = await Promise.all(
    Array.from({ length: BLOBS }, (_, i) => pushBlob(origin.url, 'crash/blobs', `crash-${i}`, 50_000 + ((i * 7919) % 13) * 400_000)),
  )
})
after(async () => {
  for (const s of shoals) await s.close()
  await proxy?.close()
  await origin?.close()
  await rm(dataDir, { recursive: true, force: true })
})

async function pull(shoal: Shoal, digest: string): Promise<{ digest: string; source: string | null }> {
  const res = await fetch(`${shoal.url}/v2/crash/blobs/blobs/${digest}?ns=origin.test`)
  if (res.status !== 200) throw new Error(`status ${res.status}`)
  const hash = createHash('sha256')
  for await (const chunk of res.body as AsyncIterable<Uint8Array>) hash.update(chunk)
  return { digest: `sha256:${hash.digest('hex')}`, source: res.headers.get('x-shoal-source') }
}

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true })
  return entries.filter((e) => e.isFile()).map((e) => e.name)
}

test(`SIGKILL at random points during ${CONCURRENT_PULLS} concurrent pulls, ${ROUNDS} times: only verified blobs survive`, async () => {
  const seed = Number(process.env.SHOAL_CRASH_SEED ?? Date.now() % 100_000)
  const random = prng(seed)
  console.log(`# seed ${seed} (replay with SHOAL_CRASH_SEED=${seed})`)
  let checked = 0
  let resumedPartials = 0
  const start = (): Promise<Shoal> =>
    startShoal({ dataDir, upstreams: { 'origin.test': proxy.url }, args: ['--store-max-bytes', String(QUOTA)] })
  for (let round = 0; round <= ROUNDS; round++) {
    const shoal = await start()
    shoals.push(shoal)
    const known = (await (await fetch(`${shoal.url}/api/v1/store/blobs`)).json()) as {
      blobs: { digest: string; size: number }[]
      partials: { digest: string; written: number }[]
    }
    // the files are exactly what the index says
    const held = new Set(known.blobs.map((b) => b.digest.slice(7)))
    const blobFiles = await filesUnder(join(dataDir, 'blobs'))
    assert.deepEqual(blobFiles.sort(), [...held].sort(), `round ${round}: orphan or missing blob files`)
    const tmpFiles = await filesUnder(join(dataDir, 'tmp'))
    assert.deepEqual(tmpFiles.sort(), known.partials.map((p) => `${p.digest.replace(':', '-')}.partial`).sort(), `round ${round}: stray temp files`)
    resumedPartials += known.partials.length
    // every held blob serves its exact bytes
    for (const b of known.blobs) {
      const got = await pull(shoal, b.digest)
      assert.equal(got.digest, b.digest, `round ${round}: blob ${b.digest} served wrong bytes`)
      checked++
    }
    if (round === ROUNDS) {
      await shoal.stop()
      break
    }
    // many concurrent pulls (some of the same blob), then a kill at a random moment
    const picks = Array.from({ length: CONCURRENT_PULLS }, () => blobs[Math.floor(random() * blobs.length)] as BlobSpec)
    const pulls = picks.map((b) =>
      pull(shoal, b.digest).then(
        (got) => assert.equal(got.digest, b.digest, 'a pull that completed must be right'),
        () => {},
      ),
    )
    const delay = round % 4 === 0 ? Math.floor(random() * 40) : Math.floor(random() * 600)
    await sleep(delay)
    await shoal.proc.stop('SIGKILL')
    await Promise.all(pulls)
  }
  const count = async (msg: string): Promise<number> => {
    let n = 0
    for (const s of shoals) n += (await s.logs()).filter((l) => l.msg === msg).length
    return n
  }
  const evictions = await count('evicted blobs')
  const reconciled = await count('store reconciled with its files after an unclean stop')
  const resumed = await count('resuming partial download')
  console.log(
    `# ${ROUNDS} kills; ${checked} held blobs verified after restarts; ${resumedPartials} partials kept for resume, ${resumed} resumed; ${evictions} eviction runs; ${reconciled} starts repaired something`,
  )
  assert.ok(evictions > 0, 'the quota made it evict')
})
