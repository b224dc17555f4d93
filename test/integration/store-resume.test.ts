/**
 * Restart resume against the real origin: a 64 MB download killed (SIGKILL) halfway finishes after
 * a restart with one Range request for the rest — origin's own log shows the first part is not
 * sent again — and the blob served matches its digest.
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, before, test } from 'node:test'
import { pushBlob } from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { type Shoal, startShoal } from '../helpers/shoal.js'
import { startThrottleProxy, type ThrottleProxy } from '../helpers/throttle.js'

const SIZE = 64 * 1024 * 1024
const RATE = 40 * 1024 * 1024

let origin: OriginRegistry
let proxy: ThrottleProxy
let dataDir: string
const shoals: Shoal[] = []

before(async () => {
  origin = await startOriginRegistry()
  proxy = await startThrottleProxy(origin.port, RATE)
  dataDir = await mkdtemp(join(tmpdir(), 'shoal-resume-'))
})
after(async () => {
  for (const s of shoals) await s.close()
  await proxy?.close()
  await origin?.close()
  await rm(dataDir, { recursive: true, force: true })
})

async function hashGet(url: string): Promise<string> {
  const res = await fetch(url)
  assert.equal(res.status, 200)
  const hash = createHash('sha256')
  for await (const chunk of res.body as AsyncIterable<Uint8Array>) hash.update(chunk)
  return `sha256:${hash.digest('hex')}`
}

test('a large blob interrupted halfway resumes after a restart without re-downloading the first half', async () => {
  const blob = await pushBlob(origin.url, 'big/resume', 'store-resume', SIZE)
  const partial = join(dataDir, 'tmp', `sha256-${blob.digest.slice(7)}.partial`)

  const first = await startShoal({ dataDir, upstreams: { 'origin.test': proxy.url } })
  shoals.push(first)
  const pull = fetch(`${first.url}/v2/big/resume/blobs/${blob.digest}?ns=origin.test`)
    .then(async (res) => {
      for await (const _ of res.body as AsyncIterable<Uint8Array>);
    })
    .catch(() => {}) // the daemon is killed mid-body
  const deadline = Date.now() + 20_000
  for (;;) {
    const size = (await stat(partial).catch(() => null))?.size ?? 0
    if (size >= SIZE / 2) break
    assert.ok(Date.now() < deadline, 'the download never got halfway')
    await sleep(10)
  }
  await first.proc.stop('SIGKILL')
  await pull
  const kept = (await stat(partial)).size
  assert.ok(kept >= SIZE / 2 && kept < SIZE, `partial file holds ${kept} bytes`)

  // restart, straight to origin this time
  const second = await startShoal({ dataDir, upstreams: { 'origin.test': origin.url } })
  shoals.push(second)
  const mark = origin.mark()
  assert.equal(await hashGet(`${second.url}/v2/big/resume/blobs/${blob.digest}?ns=origin.test`), blob.digest)
  await origin.flush()
  const sent = origin.blobBytesSince(mark, blob.digest)
  const requests = origin.requestsSince(mark, (e) => e.method === 'GET' && e.path.includes('/blobs/'))
  assert.deepEqual(
    requests.map((r) => r.status),
    [206],
    'one ranged request',
  )
  assert.equal(sent, SIZE - kept, `origin sent ${sent} bytes; only the ${SIZE - kept} missing ones were needed`)
  const logs = await second.logs()
  assert.ok(logs.some((l) => l.msg === 'resuming partial download' && l.offset === kept))
  // held, verified, and no temp file left
  const status = await second.status()
  assert.equal((status.store as { blobs: number }).blobs, 1)
  assert.deepEqual(await readdir(join(dataDir, 'tmp')), [])
  assert.equal(await hashGet(`${second.url}/v2/big/resume/blobs/${blob.digest}?ns=origin.test`), blob.digest)
  console.log(`# killed at ${(kept / 2 ** 20).toFixed(1)} MiB of ${SIZE / 2 ** 20} MiB; after restart origin sent ${(sent / 2 ** 20).toFixed(1)} MiB`)
})
