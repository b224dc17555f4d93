/**
 * The peer layer: one libp2p 3.x node (TCP, Noise, yamux, identify, ping,
 * kad-dht as a server on the private protocol `/shoal/kad/1.0.0`), an
 * optional private swarm (@libp2p/pnet), a persistent peer key, a bootstrap
 * dialer that retries, and the kad-dht `ContentRouter`.
 *
 * Swarm key file (`swarmKeyFile`), the format kubo and @libp2p/pnet use, three
 * lines of text:
 * ```
 * /key/swarm/psk/1.0.0/
 * /base16/
 * <64 hex characters: 32 random bytes>
 * ```
 * Every node of a swarm needs the same file; a node with another key (or
 * none) cannot complete a connection. Create one with `generateSwarmKey()`
 * (`shoal` writes it with mode 0600). The key only keeps strangers out of the
 * swarm; Noise still authenticates and encrypts every connection.
 *
 * Peer key file (`<dataDir>/peer.key`, mode 0600): the Ed25519 private key in
 * the libp2p protobuf encoding (`privateKeyToProtobuf`, as go-libp2p's
 * `MarshalPrivateKey`), binary. Created on first start, reused afterwards, so
 * the peer id survives restarts. A corrupt file is an error, never silently
 * replaced (that would change the node's identity).
 */
import '../polyfill.js'
import { createHash, randomBytes } from 'node:crypto'
import { lookup as dnsLookup } from 'node:dns/promises'
import { setMaxListeners } from 'node:events'
import { chmod, link, mkdir, open, readFile, stat, unlink } from 'node:fs/promises'
import path from 'node:path'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { type Identify, identify } from '@libp2p/identify'
import { type KadDHT, kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { type Ping, ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { peerIdFromString } from '@libp2p/peer-id'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { type Libp2p, createLibp2p } from 'libp2p'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import { timeoutSignal } from '../util/abort.js'
import { cachePeerStore } from './peer-store-cache.js'
import { DEFAULT_REANNOUNCE_INTERVAL_MS, type DhtBackend, DhtContentRouter, type DhtContentRouterOptions } from '../routing/dht.js'

export const DHT_PROTOCOL = '/shoal/kad/1.0.0'
export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/4001']
export const PEER_KEY_FILE = 'peer.key'
export const SWARM_KEY_HEADER = '/key/swarm/psk/1.0.0/'
const SWARM_KEY_CODEC = '/base16/'
const SWARM_KEY_HEX = /^[0-9a-fA-F]{64}$/
const DNS_ENTRY = /^dns:(.+):(\d{1,5})$/

/**
 * libp2p accepts 5 connections per second per remote IP by default: nodes
 * sharing an IP (loopback tests, NAT) that join at once get refused.
 */
const INBOUND_CONNECTION_THRESHOLD = 100
const MAX_INCOMING_PENDING_CONNECTIONS = 64
/** peers a DHT query asks at once (one path); see the kadDHT options below */
const DHT_ALPHA = 3

export const DEFAULT_BOOTSTRAP_MIN_DELAY_MS = 500
export const DEFAULT_BOOTSTRAP_MAX_DELAY_MS = 30_000
export const DEFAULT_BOOTSTRAP_DIAL_TIMEOUT_MS = 5_000
/** after a dial succeeds, how long identify + kad-dht get to put the peer in the routing table */
const BOOTSTRAP_SETTLE_MS = 3_000
/** safety net: re-check for isolation this often even without events */
const BOOTSTRAP_CHECK_INTERVAL_MS = 30_000

export interface PeerServices extends Record<string, unknown> {
  identify: Identify
  ping: Ping
  dht: KadDHT
}

export type PeerLibp2p = Libp2p<PeerServices>

/** the private key type `@libp2p/crypto` decodes */
export type PeerPrivateKey = ReturnType<typeof privateKeyFromProtobuf>

export interface PeerNodeOptions {
  /** directory for `peer.key` (created with mode 0700 if missing) */
  dataDir: string
  /** multiaddrs to listen on (default `/ip4/0.0.0.0/tcp/4001`) */
  listen?: string[]
  /**
   * Addresses to announce instead of the listen addresses (e.g. the node IP
   * when listening on 0.0.0.0 in a pod). By default every listen address is
   * announced, loopback ones only when there is nothing else.
   */
  announce?: string[]
  /**
   * Bootstrap peers: multiaddrs with or without `/p2p/<id>`, or `dns:NAME:PORT`
   * (every A/AAAA record of NAME, resolved again on each attempt). Entries
   * that turn out to be this node are skipped.
   */
  bootstrap?: string[]
  /** path of a swarm key file: join only the private swarm that shares it */
  swarmKeyFile?: string
  logger: Logger
  /** aborting it stops the node */
  signal?: AbortSignal
  routing?: RoutingOptions
  bootstrapRetry?: BootstrapRetryOptions
}

export interface RoutingOptions extends Omit<DhtContentRouterOptions, 'logger'> {
  /**
   * How long other peers keep our provider records (and we theirs), ms.
   * Default 3 × the re-announce interval (30 min), instead of kad-dht's 48 h,
   * so records of departed peers and withdrawn blobs fade within the hour.
   */
  recordTtlMs?: number
  /** kad-dht K: bucket size and providers per query (default 20) */
  kBucketSize?: number
}

export interface BootstrapRetryOptions {
  /** first retry delay, ms (default 500); doubles per failure, with jitter */
  minDelayMs?: number
  /** cap of the retry delay, ms (default 30 000) */
  maxDelayMs?: number
  /** one dial attempt, ms (default 5 000) */
  dialTimeoutMs?: number
}

export interface PeerNodeStatus {
  peerId: string
  /** announced multiaddrs, with `/p2p/<id>` */
  listenAddrs: string[]
  /** number of peers with an open connection */
  connectedPeers: number
  routingTableSize: number
}

export interface PeerNode {
  readonly peerId: string
  readonly libp2p: PeerLibp2p
  readonly router: DhtContentRouter
  status(): PeerNodeStatus
  /** stop bootstrap, routing, then libp2p; idempotent */
  stop(): Promise<void>
}

/** Base class of peer-layer errors. */
export class PeerNodeError extends Error {
  readonly code: string

  constructor(message: string, code: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'PeerNodeError'
    this.code = code
  }
}

export class PeerKeyError extends PeerNodeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_PEER_KEY', options)
    this.name = 'PeerKeyError'
  }
}

export class SwarmKeyError extends PeerNodeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_SWARM_KEY', options)
    this.name = 'SwarmKeyError'
  }
}

export class BootstrapConfigError extends PeerNodeError {
  constructor(entry: string, options?: ErrorOptions) {
    super(`invalid bootstrap entry ${JSON.stringify(entry)}: expected a multiaddr or dns:NAME:PORT`, 'ERR_BOOTSTRAP_CONFIG', options)
    this.name = 'BootstrapConfigError'
  }
}

// ---------------------------------------------------------------- peer key

/**
 * Load `<dataDir>/peer.key`, or create it (Ed25519, mode 0600) on first
 * start. A key file readable by others is tightened to 0600 with a warning.
 * Two processes racing on a fresh dataDir end up with the same key.
 */
export async function loadOrCreatePeerKey(dataDir: string, options: { logger?: Logger } = {}): Promise<PeerPrivateKey> {
  const file = path.join(dataDir, PEER_KEY_FILE)
  await mkdir(dataDir, { recursive: true, mode: 0o700 })
  const existing = await readPeerKey(file, options.logger)
  if (existing !== undefined) return existing

  const key = await generateKeyPair('Ed25519')
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
  try {
    const handle = await open(tmp, 'wx', 0o600)
    try {
      await handle.writeFile(privateKeyToProtobuf(key))
      await handle.sync()
    } finally {
      await handle.close()
    }
    await chmod(tmp, 0o600) // whatever the umask did
    try {
      await link(tmp, file) // no-clobber publish: fails if another process won
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw err
      const winner = await readPeerKey(file, options.logger)
      if (winner === undefined) throw new PeerKeyError(`${file} vanished while creating it`, { cause: err })
      return winner
    }
    await syncDir(dataDir)
  } catch (err) {
    if (err instanceof PeerKeyError) throw err
    throw new PeerKeyError(`cannot create ${file}`, { cause: err })
  } finally {
    await unlink(tmp).catch(() => {})
  }
  options.logger?.info({ file }, 'created peer key')
  return key
}

async function readPeerKey(file: string, logger: Logger | undefined): Promise<PeerPrivateKey | undefined> {
  let bytes: Buffer
  try {
    bytes = await readFile(file)
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined
    throw new PeerKeyError(`cannot read ${file}`, { cause: err })
  }
  let key: PeerPrivateKey
  try {
    key = privateKeyFromProtobuf(new Uint8Array(bytes))
  } catch (err) {
    throw new PeerKeyError(`${file} is not a libp2p private key (protobuf); move it away to create a new identity`, { cause: err })
  }
  const { mode } = await stat(file)
  if ((mode & 0o077) !== 0) {
    await chmod(file, 0o600)
    logger?.warn({ file, mode: (mode & 0o777).toString(8) }, 'peer key was readable by others; changed to 0600')
  }
  return key
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r').catch(() => undefined)
  if (handle === undefined) return
  await handle.sync().catch(() => {})
  await handle.close()
}

// ---------------------------------------------------------------- swarm key

/** a new swarm key file's content (see the format at the top of this module) */
export function generateSwarmKey(): string {
  return `${SWARM_KEY_HEADER}\n${SWARM_KEY_CODEC}\n${randomBytes(32).toString('hex')}\n`
}

/** parse and validate a swarm key file's content; returns it normalised for @libp2p/pnet */
export function parseSwarmKey(text: string): Uint8Array {
  const lines = text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line.length > 0)
  if (lines.length !== 3 || lines[0] !== SWARM_KEY_HEADER) {
    throw new SwarmKeyError(`a swarm key has three lines: ${SWARM_KEY_HEADER}, ${SWARM_KEY_CODEC}, 64 hex characters`)
  }
  if (lines[1] !== SWARM_KEY_CODEC) {
    throw new SwarmKeyError(`unsupported swarm key encoding ${JSON.stringify(lines[1])}: only ${SWARM_KEY_CODEC}`)
  }
  if (!SWARM_KEY_HEX.test(lines[2]!)) throw new SwarmKeyError('the swarm key must be 64 hex characters (32 bytes)')
  return new TextEncoder().encode(`${SWARM_KEY_HEADER}\n${SWARM_KEY_CODEC}\n${lines[2]!.toLowerCase()}`)
}

export async function readSwarmKey(file: string): Promise<Uint8Array> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new SwarmKeyError(`cannot read swarm key ${file}`, { cause: err })
  }
  try {
    return parseSwarmKey(text)
  } catch (err) {
    throw new SwarmKeyError(`invalid swarm key ${file}`, { cause: err })
  }
}

// ---------------------------------------------------------------- bootstrap entries

export type BootstrapTarget =
  | { kind: 'multiaddr'; entry: string; addr: Multiaddr }
  | { kind: 'dns'; entry: string; host: string; port: number }

/** parse one bootstrap entry; throws `BootstrapConfigError` */
export function parseBootstrapEntry(entry: string): BootstrapTarget {
  const dns = DNS_ENTRY.exec(entry)
  if (dns !== null) {
    const host = dns[1]!.replace(/^\[(.*)\]$/, '$1')
    const port = Number(dns[2])
    if (host.length === 0 || port < 1 || port > 65535) throw new BootstrapConfigError(entry)
    return { kind: 'dns', entry, host, port }
  }
  if (!entry.startsWith('/')) throw new BootstrapConfigError(entry)
  try {
    return { kind: 'multiaddr', entry, addr: multiaddr(entry) }
  } catch (err) {
    throw new BootstrapConfigError(entry, { cause: err })
  }
}

// ---------------------------------------------------------------- node

/** the kad-dht routing table as it is at runtime (not part of the public typings) */
interface RoutingTableView extends EventTarget {
  readonly size: number
  closestPeers(kadId: Uint8Array, options?: { count?: number }): Array<{ toString(): string }>
}

function routingTableOf(dht: KadDHT): RoutingTableView {
  const table = (dht as unknown as { routingTable?: Partial<RoutingTableView> }).routingTable
  if (table === undefined || typeof table.size !== 'number' || typeof table.addEventListener !== 'function' || typeof table.closestPeers !== 'function') {
    throw new PeerNodeError('kad-dht has no routing table: unsupported @libp2p/kad-dht version', 'ERR_KAD_DHT_VERSION')
  }
  return table as RoutingTableView
}

function dhtBackend(node: PeerLibp2p, table: RoutingTableView): DhtBackend {
  const dht = node.services.dht
  return {
    selfId: node.peerId.toString(),
    routingTableSize: () => table.size,
    onPeerAdded: (listener) => {
      const handler = (): void => listener()
      table.addEventListener('peer:add', handler)
      return () => table.removeEventListener('peer:add', handler)
    },
    provide: (cid, options) => dht.provide(cid, options),
    findProviders: (cid, options) => dht.findProviders(cid, options),
    localClosest: (cid, count) => table.closestPeers(createHash('sha256').update(cid.multihash.bytes).digest(), { count }).map((id) => id.toString()),
    connectedPeers: async () => {
      const out: string[] = []
      for (const id of node.getPeers()) {
        const peer = await node.peerStore.get(id).catch(() => undefined)
        if (peer?.protocols.includes(DHT_PROTOCOL) === true) out.push(id.toString())
      }
      return out
    },
    addressesOf: async (id) => (await node.peerStore.get(peerIdFromString(id))).addresses.map((a) => a.multiaddr.toString()),
    cancelReprovide: (cid) => dht.cancelReprovide(cid),
    ...recordStore(node)
  }
}

/** the parts of kad-dht's KadDHT that storing a provider record uses (not part of its public typings) */
interface KadInternals {
  providers?: { addProvider?(cid: CID, provider: PeerLibp2p['peerId'], options?: { signal?: AbortSignal }): Promise<void> }
  network?: {
    sendMessage?(to: PeerLibp2p['peerId'], msg: object, options: { signal?: AbortSignal; path: object }): AsyncIterable<{ name: string }>
  }
}

/**
 * `DhtBackend.storeRecord`, done as kad-dht's own `provide` does once its walk is over: the
 * record into kad-dht's provider store, then an ADD_PROVIDER message (our peer id and addresses)
 * to each peer, all at once. It goes through kad-dht's internals, so it is only offered when they
 * are there in the shape this was written against (@libp2p/kad-dht 16); otherwise the router
 * walks with `provide`.
 */
function recordStore(node: PeerLibp2p): Pick<DhtBackend, 'storeRecord'> {
  const { providers, network } = node.services.dht as unknown as KadInternals
  const addProvider = providers?.addProvider?.bind(providers)
  const sendMessage = network?.sendMessage?.bind(network)
  if (addProvider === undefined || sendMessage === undefined) return {}
  return {
    storeRecord: async (cid, peerIds, options) => {
      await addProvider(cid, node.peerId, options)
      const message = {
        type: 'ADD_PROVIDER',
        key: cid.multihash.bytes,
        providers: [{ id: node.peerId.toMultihash().bytes, multiaddrs: node.getMultiaddrs().map((ma) => ma.bytes) }]
      }
      const path = { index: 0, queued: 0, running: 0, total: 0 }
      const sent = await Promise.all(
        peerIds.map(async (id) => {
          try {
            for await (const event of sendMessage(peerIdFromString(id), message, { signal: options.signal, path })) {
              if (event.name === 'PEER_RESPONSE') return true
            }
          } catch {
            // a peer that is gone does not take it; the others may
          }
          return false
        })
      )
      options.signal.throwIfAborted()
      return sent.filter(Boolean).length
    }
  }
}

/** announce loopback addresses only when there is nothing else to announce */
function announceFilter(addrs: Multiaddr[]): Multiaddr[] {
  const reachable = addrs.filter((addr) => !isLoopback(addr))
  return reachable.length > 0 ? reachable : addrs
}

function isLoopback(addr: Multiaddr): boolean {
  const first = addr.getComponents()[0]
  if (first === undefined) return false
  if (first.name === 'ip4') return first.value?.startsWith('127.') === true
  if (first.name === 'ip6') return first.value === '::1'
  return false
}

export async function createPeerNode(options: PeerNodeOptions): Promise<PeerNode> {
  options.signal?.throwIfAborted()
  const log = options.logger.child({ component: 'p2p' })
  const bootstrapTargets = (options.bootstrap ?? []).map(parseBootstrapEntry)
  const privateKey = await loadOrCreatePeerKey(options.dataDir, { logger: log })
  const psk = options.swarmKeyFile === undefined ? undefined : await readSwarmKey(options.swarmKeyFile)
  const routing = options.routing ?? {}
  const reannounceIntervalMs = routing.reannounceIntervalMs ?? DEFAULT_REANNOUNCE_INTERVAL_MS
  const recordTtlMs = routing.recordTtlMs ?? 3 * reannounceIntervalMs
  if (recordTtlMs <= reannounceIntervalMs) {
    log.warn({ recordTtlMs, reannounceIntervalMs }, 'provider records expire before they are re-announced')
  }

  const libp2p = await createLibp2p<PeerServices>({
    // started below, once the peer store has its cache
    start: false,
    privateKey,
    addresses: {
      listen: options.listen ?? DEFAULT_LISTEN,
      ...(options.announce === undefined ? { announceFilter } : { announce: options.announce })
    },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    ...(psk === undefined ? {} : { connectionProtector: preSharedKey({ psk }) }),
    connectionManager: {
      inboundConnectionThreshold: INBOUND_CONNECTION_THRESHOLD,
      maxIncomingPendingConnections: MAX_INCOMING_PENDING_CONNECTIONS
    },
    // No connection monitor: it opens a ping stream on every connection every 10 s (a
    // multistream-select negotiation and peer-store writes each: most of an idle node's CPU,
    // profiled), and on a loaded node a late answer closed the connection, and the redial,
    // handshake and routing-table churn loaded it more. yamux's own keep-alive, TCP and the
    // data plane's timeouts notice a dead peer.
    connectionMonitor: { enabled: false },
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: DHT_PROTOCOL,
        // a LAN/cluster DHT: the server role is a given, not inferred from a public address
        clientMode: false,
        // Kademlia's own α = 3 on one path, not kad-dht's 10 on as many disjoint paths (for
        // adversarial, high-latency networks), which made every walk in a 16-node fleet ask
        // nearly every node at once. The kad-dht streams in the first 20 s of a 16-node
        // fan-out went from 1,094 to 613 (fanout-logs.js on one `--shoal-env DEBUG=libp2p:*`
        // run each); its time and CPU did not move beyond noise.
        alpha: DHT_ALPHA,
        disjointPaths: 1,
        // keep every address, private and loopback included (the default mapper drops private ones)
        peerInfoMapper: passthroughMapper,
        // every query waits for the first self-query, which kad-dht starts 1 s after
        // start by default: start it at once (it still waits for a first peer)
        initialQuerySelfInterval: 0,
        ...(routing.kBucketSize === undefined ? {} : { kBucketSize: routing.kBucketSize }),
        reprovide: {
          // how long records we store for others live, and how often they are cleaned;
          // threshold 0: kad-dht re-provides our own records only once expired, the
          // router's schedule keeps them fresh before that
          validity: recordTtlMs,
          interval: reannounceIntervalMs,
          threshold: 0
        }
      })
    }
  })

  cachePeerStore(libp2p.peerStore)
  await libp2p.start()

  let routingTable: RoutingTableView
  try {
    routingTable = routingTableOf(libp2p.services.dht)
  } catch (err) {
    await libp2p.stop()
    throw err
  }
  const router = new DhtContentRouter(dhtBackend(libp2p, routingTable), {
    logger: options.logger.child({ component: 'routing' }),
    ...(routing.kBucketSize === undefined ? {} : { recordPeers: routing.kBucketSize }),
    advertiseTimeoutMs: routing.advertiseTimeoutMs,
    lookupTimeoutMs: routing.lookupTimeoutMs,
    reannounceIntervalMs,
    reannounceConcurrency: routing.reannounceConcurrency
  })
  const bootstrapper = new Bootstrapper(libp2p, routingTable, bootstrapTargets, log, options.bootstrapRetry ?? {})
  bootstrapper.start()

  const peerId = libp2p.peerId.toString()
  log.info(
    { peerId, addrs: libp2p.getMultiaddrs().map(String), privateSwarm: psk !== undefined, bootstrap: bootstrapTargets.length },
    'peer node started'
  )

  let stopping: Promise<void> | undefined
  const onAbort = (): void => {
    stop().catch((err: unknown) => log.error({ err }, 'stopping the peer node failed'))
  }
  function stop(): Promise<void> {
    stopping ??= (async () => {
      options.signal?.removeEventListener('abort', onAbort)
      await bootstrapper.stop()
      await router.stop()
      await libp2p.stop()
      log.info({ peerId }, 'peer node stopped')
    })()
    return stopping
  }
  options.signal?.addEventListener('abort', onAbort, { once: true })
  if (options.signal?.aborted === true) onAbort() // aborted while starting

  return {
    peerId,
    libp2p,
    router,
    status: () => ({
      peerId,
      listenAddrs: libp2p.getMultiaddrs().map(String),
      connectedPeers: libp2p.getPeers().length,
      routingTableSize: routingTable.size
    }),
    stop
  }
}

// ---------------------------------------------------------------- bootstrap dialer

/**
 * Dials the bootstrap entries while the node is isolated (empty routing table,
 * or no connection at all), with capped, jittered exponential backoff between
 * failed rounds; then sleeps until the node is isolated again. (The stock
 * @libp2p/bootstrap dials once and never retries.)
 */
class Bootstrapper {
  private readonly libp2p: PeerLibp2p
  private readonly table: RoutingTableView
  private readonly targets: BootstrapTarget[]
  private readonly log: Logger
  private readonly minDelayMs: number
  private readonly maxDelayMs: number
  private readonly dialTimeoutMs: number
  private readonly controller = new AbortController()
  private readonly waiters = new Set<() => void>()
  /** bare addresses that turned out to be this node */
  private readonly selfAddrs = new Set<string>()
  private loop: Promise<void> | undefined
  private readonly notify = (): void => {
    for (const check of [...this.waiters]) check()
  }

  constructor(libp2p: PeerLibp2p, table: RoutingTableView, targets: BootstrapTarget[], log: Logger, retry: BootstrapRetryOptions) {
    this.libp2p = libp2p
    this.table = table
    this.targets = targets
    this.log = log
    this.minDelayMs = Math.max(1, retry.minDelayMs ?? DEFAULT_BOOTSTRAP_MIN_DELAY_MS)
    this.maxDelayMs = Math.max(this.minDelayMs, retry.maxDelayMs ?? DEFAULT_BOOTSTRAP_MAX_DELAY_MS)
    this.dialTimeoutMs = retry.dialTimeoutMs ?? DEFAULT_BOOTSTRAP_DIAL_TIMEOUT_MS
    setMaxListeners(Number.POSITIVE_INFINITY, this.controller.signal)
  }

  start(): void {
    if (this.targets.length === 0) return
    this.table.addEventListener('peer:add', this.notify)
    this.table.addEventListener('peer:remove', this.notify)
    this.libp2p.addEventListener('peer:connect', this.notify)
    this.libp2p.addEventListener('peer:disconnect', this.notify)
    this.loop = this.run().catch((err: unknown) => {
      this.log.error({ err }, 'bootstrap loop failed')
    })
  }

  async stop(): Promise<void> {
    this.controller.abort()
    this.notify()
    this.table.removeEventListener('peer:add', this.notify)
    this.table.removeEventListener('peer:remove', this.notify)
    this.libp2p.removeEventListener('peer:connect', this.notify)
    this.libp2p.removeEventListener('peer:disconnect', this.notify)
    await this.loop
  }

  private isolated(): boolean {
    return this.table.size === 0 || this.libp2p.getConnections().length === 0
  }

  private async run(): Promise<void> {
    const signal = this.controller.signal
    let failures = 0
    let joinedOnce = false
    while (!signal.aborted) {
      if (!this.isolated()) {
        failures = 0
        await this.wait(BOOTSTRAP_CHECK_INTERVAL_MS, () => this.isolated())
        continue
      }
      const started = performance.now()
      const { dialed, others, unresolved } = await this.attempt()
      if (signal.aborted) return
      if (dialed > 0) await this.wait(BOOTSTRAP_SETTLE_MS, () => this.table.size > 0)
      if (this.table.size > 0) {
        this.log.info(
          { routingTableSize: this.table.size, dialed, attempts: failures + 1, ms: Math.round(performance.now() - started) },
          joinedOnce ? 'rejoined swarm' : 'joined swarm'
        )
        joinedOnce = true
        failures = 0
        continue
      }
      failures++
      const delayMs = this.backoff(failures)
      if (others === 0 && unresolved === 0) {
        // every entry is this node: a seed listing itself waits for others to dial in
        this.log.debug({ failures, retryInMs: delayMs }, 'no bootstrap peer other than this node; waiting')
      } else {
        const level = failures === 1 || failures % 10 === 0 ? 'warn' : 'debug'
        this.log[level]({ failures, candidates: others, unresolved, retryInMs: delayMs }, 'bootstrap found no peer; retrying')
      }
      await this.wait(delayMs, () => !this.isolated())
    }
  }

  /** equal jitter: half the capped exponential delay, plus a random part of the other half */
  private backoff(failures: number): number {
    const capped = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** Math.min(failures - 1, 30))
    return Math.round(capped / 2 + Math.random() * (capped / 2))
  }

  /** dial every resolved bootstrap address at once */
  private async attempt(): Promise<{ dialed: number; others: number; unresolved: number }> {
    const resolved = await Promise.all(this.targets.map((target) => this.resolve(target)))
    const addrs = resolved.flatMap((r) => r ?? [])
    const results = await Promise.all(addrs.map((addr) => this.dial(addr)))
    return {
      dialed: results.filter(Boolean).length,
      // addresses not known to be this node: 0 (and nothing unresolved) means this node is the seed
      others: addrs.filter((addr) => !this.isSelf(addr)).length,
      unresolved: resolved.filter((r) => r === undefined).length
    }
  }

  private isSelf(addr: Multiaddr): boolean {
    if (this.selfAddrs.has(addr.toString())) return true
    return addr.getComponents().findLast((c) => c.name === 'p2p')?.value === this.libp2p.peerId.toString()
  }

  /** the entry's addresses, or undefined when its name does not resolve */
  private async resolve(target: BootstrapTarget): Promise<Multiaddr[] | undefined> {
    if (target.kind === 'multiaddr') return [target.addr]
    try {
      const records = await dnsLookup(target.host, { all: true })
      return records.map(({ address, family }) => multiaddr(`/${family === 6 ? 'ip6' : 'ip4'}/${address}/tcp/${target.port}`))
    } catch (err) {
      this.log.debug({ err, entry: target.entry }, 'bootstrap name did not resolve')
      return undefined
    }
  }

  private async dial(addr: Multiaddr): Promise<boolean> {
    const text = addr.toString()
    if (this.isSelf(addr)) return false
    const signal = timeoutSignal(this.dialTimeoutMs, this.controller.signal)
    try {
      // an address without /p2p/ is fine: libp2p learns the peer id from the Noise handshake
      const connection = await this.libp2p.dial(addr, { signal })
      this.log.debug({ addr: text, peer: connection.remotePeer.toString() }, 'bootstrap dial succeeded')
      return true
    } catch (err) {
      if (isDialSelfError(err)) {
        this.selfAddrs.add(text)
        return false
      }
      if (!this.controller.signal.aborted) this.log.debug({ err, addr: text }, 'bootstrap dial failed')
      return false
    }
  }

  /** resolve after `ms`, on stop, or as soon as `until()` holds (checked on peer events) */
  private wait(ms: number, until: () => boolean): Promise<void> {
    return new Promise((resolve) => {
      const signal = this.controller.signal
      if (signal.aborted || until()) {
        resolve()
        return
      }
      const done = (): void => {
        clearTimeout(timer)
        this.waiters.delete(check)
        signal.removeEventListener('abort', done)
        resolve()
      }
      const check = (): void => {
        if (signal.aborted || until()) done()
      }
      const timer = setTimeout(done, ms)
      signal.addEventListener('abort', done, { once: true })
      this.waiters.add(check)
    })
  }
}

function isDialSelfError(err: unknown): boolean {
  return err instanceof Error && err.name === 'InvalidPeerIdError' && /dial self/i.test(err.message)
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined
}
