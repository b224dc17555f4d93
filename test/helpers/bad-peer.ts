// A peer that lies: built from the project's own peer parts (libp2p node, peer data server and
// client, content router), it joins a swarm, claims to hold a blob with the right size and chunk
// table (learnt from an honest peer), announces it, and serves every chunk with one bit flipped.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { createPeerNode, type PeerNode } from '../../src/p2p/node.js'
import { type BlobInfo, type ChunkProvider, chunkLength, createPeerDataClient, createPeerDataServer, type PeerDataClient, type PeerDataServer } from '../../src/peer/index.js'
import type { PeerRef } from '../../src/routing/types.js'

export interface BadPeer {
  readonly peerId: string
  readonly node: PeerNode
  readonly server: PeerDataServer
  /** chunk reads served (each one corrupted) */
  readonly corruptChunksServed: number
  /**
   * Learn a blob's info from an honest peer, claim to hold all of it, and announce it (resolves
   * once the provider record is stored on a peer).
   */
  hold(digest: string, honest: PeerRef): Promise<BlobInfo>
  close(): Promise<void>
}

export interface StartBadPeerOptions {
  /** multiaddrs to bootstrap from (with or without /p2p/<id>) */
  bootstrap: string[]
  swarmKeyFile?: string
  /** the data port speaks TLS-PSK (the daemons' default); default true */
  encrypt?: boolean
}

/** a PeerRef from a multiaddr list ending /p2p/<id> (as status p2p.listen gives them) */
export function peerRef(peerId: string, listen: string[]): PeerRef {
  return { id: peerId, addrs: listen.map((a) => a.replace(/\/p2p\/[^/]+$/, '')) }
}

export async function startBadPeer(opts: StartBadPeerOptions): Promise<BadPeer> {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-bad-peer-'))
  const logger = pino({ level: process.env['SHOAL_TEST_LOG'] ?? 'silent' }).child({ node: 'bad-peer' })
  const encrypt = opts.encrypt ?? true
  const held = new Map<string, { info: BlobInfo; from: PeerRef }>()
  const honestChunks = new Map<string, Promise<Buffer>>()
  let served = 0
  let client: PeerDataClient | undefined

  const honestChunk = (digest: string, index: number, signal: AbortSignal): Promise<Buffer> => {
    const key = `${digest}/${index}`
    let pending = honestChunks.get(key)
    if (pending === undefined) {
      const entry = held.get(digest)!
      pending = (async () => {
        const into = Buffer.alloc(chunkLength(entry.info, index))
        await client!.fetchChunk(entry.from, digest, index, { signal, into })
        return into
      })()
      pending.catch(() => honestChunks.delete(key))
      honestChunks.set(key, pending)
    }
    return pending
  }

  const provider: ChunkProvider = {
    async info(digest) {
      return held.get(digest)?.info
    },
    layout(digest) {
      return held.get(digest)?.info
    },
    async read(digest, index, signal) {
      const entry = held.get(digest)
      if (entry === undefined || index >= entry.info.have.length) return undefined
      // the right length, the right bytes but one: a single flipped bit in the middle
      const bytes = Buffer.from(await honestChunk(digest, index, signal))
      if (bytes.length > 0) bytes[bytes.length >> 1]! ^= 0x01
      served++
      return { bytes }
    },
  }

  let node: PeerNode | undefined
  let server: PeerDataServer | undefined
  try {
    node = await createPeerNode({
      dataDir: dir,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: opts.bootstrap,
      swarmKeyFile: opts.swarmKeyFile,
      logger,
      bootstrapRetry: { minDelayMs: 100, maxDelayMs: 1_000, dialTimeoutMs: 2_000 },
    })
    server = await createPeerDataServer({
      libp2p: node.libp2p,
      provider,
      encrypt,
      listen: { host: '127.0.0.1', port: 0 },
      maxUploads: 16,
      logger,
    })
    client = createPeerDataClient({ libp2p: node.libp2p, encrypt, logger, timeoutMs: 10_000 })
  } catch (err) {
    await server?.close()
    await node?.stop()
    await rm(dir, { recursive: true, force: true })
    throw err
  }
  const liveNode = node
  const liveServer = server
  const liveClient = client

  const deadline = Date.now() + 15_000
  while (!liveNode.router.ready()) {
    if (Date.now() > deadline) {
      await liveServer.close()
      await liveClient.close()
      await liveNode.stop()
      await rm(dir, { recursive: true, force: true })
      throw new Error(`bad peer did not join the swarm through ${opts.bootstrap.join(', ')}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }

  return {
    peerId: liveNode.peerId,
    node: liveNode,
    server: liveServer,
    get corruptChunksServed() {
      return served
    },
    hold: async (digest, honest) => {
      const info = await liveClient.info(honest, digest, { signal: AbortSignal.timeout(10_000) })
      if (info === undefined || info.table === undefined) throw new Error(`honest peer ${honest.id} does not hold ${digest}`)
      const claim: BlobInfo = { size: info.size, chunkSize: info.chunkSize, table: [...info.table], have: info.have.map(() => true) }
      held.set(digest, { info: claim, from: honest })
      await liveNode.router.advertise(digest, { signal: AbortSignal.timeout(10_000) })
      return claim
    },
    close: async () => {
      await liveServer.close()
      await liveClient.close()
      await liveNode.stop()
      await rm(dir, { recursive: true, force: true })
    },
  }
}
