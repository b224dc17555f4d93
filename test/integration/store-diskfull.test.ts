/**
 * A full disk never fails a pull origin can serve. The data dir lives on a small tmpfs that the
 * test mounts (root only; skipped otherwise): a blob larger than the quota, a disk filled by
 * someone else, and a disk that fills up in the middle of a download are all streamed through
 * from origin with the right bytes, and no partial file is left behind.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, open, readdir, rm, rmdir, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, before, describe, test } from 'node:test'
import { pushBlob } from '../helpers/images.js'
import { type OriginRegistry, startOriginRegistry } from '../helpers/registry.js'
import { type Shoal, startShoal } from '../helpers/shoal.js'
import { startThrottleProxy, type ThrottleProxy } from '../helpers/throttle.js'

const FS_BYTES = 32 * 1024 * 1024
const isRoot = process.getuid?.() === 0

describe('disk full', { skip: isRoot ? false : 'needs root to mount a tmpfs' }, () => {
  let mountDir: string
  let mounted = false
  let origin: OriginRegistry
  let proxy: ThrottleProxy
  let shoal: Shoal
  let dataDir: string
  const filler = () => join(mountDir, 'filler')

  before(async () => {
    mountDir = await mkdtemp(join(tmpdir(), 'shoal-tmpfs-'))
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${FS_BYTES}`, 'tmpfs', mountDir])
    mounted = true
    dataDir = join(mountDir, 'data')
    await mkdir(dataDir)
    origin = await startOriginRegistry()
    proxy = await startThrottleProxy(origin.port, 16 * 1024 * 1024)
    shoal = await startShoal({ dataDir, upstreams: { 'origin.test': origin.url, 'slow.test': proxy.url }, env: { SHOAL_STORE_MAX_PERCENT: '80' } })
  })
  after(async () => {
    await shoal?.close()
    await proxy?.close()
    await origin?.close()
    if (mounted) execFileSync('umount', [mountDir])
    if (mountDir) await rmdir(mountDir)
  })

  async function pull(ns: string, digest: string): Promise<string> {
    const res = await fetch(`${shoal.url}/v2/disk/full/blobs/${digest}?ns=${ns}`)
    assert.equal(res.status, 200)
    const hash = createHash('sha256')
    for await (const chunk of res.body as AsyncIterable<Uint8Array>) hash.update(chunk)
    return `sha256:${hash.digest('hex')}`
  }

  async function held(): Promise<string[]> {
    const list = (await (await fetch(`${shoal.url}/api/v1/store/blobs`)).json()) as { blobs: { digest: string }[] }
    return list.blobs.map((b) => b.digest)
  }

  /** writes zeros until the file system is full (ENOSPC) */
  async function fillDisk(): Promise<void> {
    const fh = await open(filler(), 'a')
    const zeros = Buffer.alloc(256 * 1024)
    try {
      for (;;) await fh.write(zeros)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
    } finally {
      await fh.close()
    }
  }

  const tmpFiles = () => readdir(join(dataDir, 'tmp'))

  test('a blob larger than the quota streams through, uncached', async () => {
    const blob = await pushBlob(origin.url, 'disk/full', 'too-big', 40 * 1024 * 1024)
    assert.equal(await pull('origin.test', blob.digest), blob.digest)
    assert.deepEqual(await held(), [])
    assert.deepEqual(await tmpFiles(), [])
    const logs = await shoal.logs()
    assert.ok(logs.some((l) => l.msg === 'store full: streaming blob through from origin without caching' && l.digest === blob.digest))
  })

  test('a disk filled by someone else: pulls stream through; the store caches again once there is room', async () => {
    const blob = await pushBlob(origin.url, 'disk/full', 'while-full', 4 * 1024 * 1024)
    await fillDisk()
    try {
      assert.equal(await pull('origin.test', blob.digest), blob.digest)
      assert.equal(await pull('origin.test', blob.digest), blob.digest)
      assert.deepEqual(await held(), [])
      assert.deepEqual(await tmpFiles(), [])
    } finally {
      await rm(filler(), { force: true })
    }
    assert.equal(await pull('origin.test', blob.digest), blob.digest)
    assert.deepEqual(await held(), [blob.digest])
  })

  test('the disk filling up mid-download: the clients get the rest from origin, no partial file stays', async () => {
    const blob = await pushBlob(origin.url, 'disk/full', 'fills-midway', 12 * 1024 * 1024)
    const partial = join(dataDir, 'tmp', `sha256-${blob.digest.slice(7)}.partial`)
    const pulls = [pull('slow.test', blob.digest), pull('slow.test', blob.digest)]
    const deadline = Date.now() + 10_000
    while (((await stat(partial).catch(() => null))?.size ?? 0) < 1024 * 1024) {
      assert.ok(Date.now() < deadline, 'the download did not start')
      await sleep(5)
    }
    await fillDisk()
    try {
      for (const got of await Promise.all(pulls)) assert.equal(got, blob.digest)
      assert.ok(!(await held()).includes(blob.digest))
      assert.deepEqual(await tmpFiles(), [])
      const logs = await shoal.logs()
      assert.ok(logs.some((l) => l.msg === 'disk full: streaming the rest of the blob through from origin without caching'))
    } finally {
      await rm(filler(), { force: true })
    }
  })
})
