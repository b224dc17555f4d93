/**
 * Real Shoal daemons on loopback for benchmarks: an origin registry holding one random blob, sets
 * of seeding daemons that hold it (set up untimed), and fresh pulling daemons bootstrapped to a
 * set. Built on the test helpers (the built CLI, docker-registry), so the bench drives exactly
 * what the tests drive.
 */
import { pushBlob } from '../../../test/helpers/images.js'
import { waitFor } from '../../../test/helpers/proc.js'
import { type OriginRegistry, startOriginRegistry } from '../../../test/helpers/registry.js'
import { type ShoalLogLine, startShoal } from '../../../test/helpers/shoal.js'
import { asSwarmNode, blobUrl, fetchedBytes, hashGet, type P2pStatus, type SwarmNode } from '../../../test/helpers/swarm.js'

/** the repository the blob is pushed to */
const REPO = 'bench/blob'
const JOIN_TIMEOUT_MS = 30_000
const ANNOUNCE_TIMEOUT_MS = 60_000

export interface OriginBlob {
  origin: OriginRegistry
  /** the registry name daemons map to the origin (HOST:PORT), also the `ns` of /v2 URLs */
  ns: string
  digest: string
  size: number
}

/** docker-registry on loopback holding one random blob of `size` bytes */
export async function startOriginWithBlob(size: number, seed: string): Promise<OriginBlob> {
  const origin = await startOriginRegistry()
  try {
    const blob = await pushBlob(origin.url, REPO, seed, size)
    return { origin, ns: origin.host, digest: blob.digest, size: blob.size }
  } catch (err) {
    await origin.close()
    throw err
  }
}

export interface DaemonOptions {
  /** false: SHOAL_P2P_ENCRYPT=false (chunk bytes in plaintext on the peer data port) */
  encrypt: boolean
  /** multiaddrs with /p2p/<id> */
  bootstrap?: string[]
  /** default: a fresh temp dir, removed by close() */
  dataDir?: string
  logLevel?: string
}

export type Daemon = SwarmNode & { readonly pid: number }

/** startShoal gives a daemon 20 s to answer /healthz: on a loaded machine it may take longer */
const START_ATTEMPTS = 3

export async function startDaemon(blob: OriginBlob, opts: DaemonOptions): Promise<Daemon> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startDaemonOnce(blob, opts)
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_WAIT_TIMEOUT' || attempt >= START_ATTEMPTS) throw err
      // the helper reports a daemon that exited early as a timeout too: its log is in the cause
      const cause = (err as { cause?: { message?: string } }).cause?.message ?? ''
      process.stderr.write(`a daemon did not answer /healthz in time (attempt ${attempt}/${START_ATTEMPTS})${cause === '' ? '' : `: ${cause.trim().split('\n')[0]}`}: starting it again\n`)
    }
  }
}

async function startDaemonOnce(blob: OriginBlob, opts: DaemonOptions): Promise<Daemon> {
  const args: string[] = []
  for (const addr of opts.bootstrap ?? []) args.push('--bootstrap', addr)
  const shoal = await startShoal({
    upstreams: { [blob.ns]: blob.origin.url },
    dataDir: opts.dataDir,
    logLevel: opts.logLevel ?? 'warn',
    env: { SHOAL_P2P_ENCRYPT: String(opts.encrypt) },
    args,
  })
  try {
    const node = await asSwarmNode(shoal, 0)
    const p2p = await node.p2p()
    if (p2p['encrypt'] !== opts.encrypt) throw new Error(`daemon reports p2p.encrypt=${String(p2p['encrypt'])}, asked for ${opts.encrypt}`)
    if (shoal.proc.pid === undefined) throw new Error('daemon has no pid')
    return Object.assign(node, { pid: shoal.proc.pid })
  } catch (err) {
    await shoal.close()
    throw err
  }
}

export function blobUrlOf(node: Daemon, blob: OriginBlob): string {
  return blobUrl(node, REPO, blob.digest, blob.ns)
}

/** an untimed GET of the blob through a daemon; throws unless it is complete and verified */
export async function pullThrough(node: Daemon, blob: OriginBlob): Promise<void> {
  const got = await hashGet(blobUrlOf(node, blob))
  if (got.status !== 200 || got.digest !== blob.digest || got.bytes !== blob.size) {
    throw new Error(`GET through ${node.url}: HTTP ${got.status}, ${got.bytes} bytes hashing to ${got.digest}`)
  }
}

export async function waitP2p(node: Daemon, what: string, check: (s: P2pStatus) => boolean, timeoutMs = JOIN_TIMEOUT_MS): Promise<P2pStatus> {
  let last: P2pStatus | undefined
  try {
    await waitFor(
      what,
      async () => {
        last = await node.p2p()
        return check(last)
      },
      { timeoutMs, intervalMs: 100 },
    )
  } catch (err) {
    throw new Error(`${(err as Error).message}: ${JSON.stringify(last)}`, { cause: err })
  }
  return last!
}

/** the startup notice of a swarm without a key: expected here (loopback, no --swarm-key) */
const NO_SWARM_KEY = /^no swarm key/

/** the daemon's log lines at warn level or above so far (the no-swarm-key notice left out) */
export async function warnings(node: Daemon): Promise<ShoalLogLine[]> {
  return (await node.logs()).filter((l) => typeof l.level === 'number' && l.level >= 40 && !NO_SWARM_KEY.test(l.msg))
}

export interface SeederSet {
  readonly name: string
  readonly encrypt: boolean
  readonly nodes: Daemon[]
  /** bytes origin served while the set was built (the first node's fetch, ideally nothing more) */
  readonly originBytes: number
  close(): Promise<void>
}

/**
 * `count` daemons that hold the blob, in a swarm of their own: node 1 alone fetches it from
 * origin; each next node starts bootstrapped to the ones before and pulls it through its /v2 (from
 * them). Resolves when every node holds it and, with more than one node, has joined and announced.
 */
export async function startSeeders(
  blob: OriginBlob,
  opts: { name: string; count: number; encrypt: boolean; dataDir: (index: number) => string; logLevel?: string },
): Promise<SeederSet> {
  const nodes: Daemon[] = []
  const close = async (): Promise<void> => {
    await Promise.allSettled(nodes.map((n) => n.close()))
  }
  try {
    await blob.origin.flush()
    const mark = blob.origin.mark()
    for (let i = 1; i <= opts.count; i++) {
      const node = await startDaemon(blob, { encrypt: opts.encrypt, bootstrap: nodes.map((n) => n.p2pAddr), dataDir: opts.dataDir(i), logLevel: opts.logLevel })
      nodes.push(node)
      if (i > 1) await waitP2p(node, `${opts.name} seeder ${i} to join`, (s) => s.joined && s.routingTableSize >= i - 1)
      await pullThrough(node, blob)
    }
    if (nodes.length > 1) {
      await Promise.all(nodes.map((n, i) => waitP2p(n, `${opts.name} seeder ${i + 1} to announce`, (s) => s.joined && Number(s['announced']) >= 1, ANNOUNCE_TIMEOUT_MS)))
    }
    await blob.origin.flush()
    return { name: opts.name, encrypt: opts.encrypt, nodes, originBytes: blob.origin.blobBytesSince(mark, blob.digest), close }
  } catch (err) {
    await close()
    throw err
  }
}

/** what the pulling daemon says about where its bytes came from */
export interface PullAccounting {
  /** blob bytes origin's own log shows it served during the pull */
  originBytes: number
  /** every request origin logged during the pull (HEADs included) */
  originRequests: number
  /** those requests, `METHOD path status bytes` (origin cannot tell which local process asked) */
  originLog: string[]
  /** shoal_transfer_fetched_bytes_total of the puller, by source */
  fetchedOrigin: number
  fetchedPeer: number
  /** p2p.bytesFromPeer of the puller, in the order of the set's nodes (bytes from anyone else last) */
  fromSeeder: number[]
  fromOthers: number
  /** warn-or-worse log lines of the puller */
  warnings: ShoalLogLine[]
}

export async function pullAccounting(puller: Daemon, set: SeederSet, blob: OriginBlob, originMark: number): Promise<PullAccounting> {
  await blob.origin.flush()
  const metrics = await puller.metrics()
  const p2p = await puller.p2p()
  const fromPeer = { ...p2p.bytesFromPeer }
  const fromSeeder = set.nodes.map((n) => {
    const v = fromPeer[n.peerId] ?? 0
    delete fromPeer[n.peerId]
    return v
  })
  return {
    originBytes: blob.origin.blobBytesSince(originMark, blob.digest),
    originRequests: blob.origin.requestsSince(originMark).length,
    originLog: blob.origin.requestsSince(originMark).map((e) => `${e.method} ${e.path} ${e.status} ${e.bytes}`),
    fetchedOrigin: fetchedBytes(metrics, 'origin'),
    fetchedPeer: fetchedBytes(metrics, 'peer'),
    fromSeeder,
    fromOthers: Object.values(fromPeer).reduce((a, b) => a + b, 0),
    warnings: await warnings(puller),
  }
}
