import type { Logger } from 'pino'
import type { BlobWriter } from '../store/blob-store.js'
import { type ChunkPlan, chunkBounds, chunkHash } from './chunks/plan.js'
import { OriginChunkSource } from './chunks/origin-source.js'
import { ChunkScheduler, type ChunkSource, TableMismatchError } from './chunks/scheduler.js'
import { ChunkState } from './chunks/state.js'
import type { Download } from './download.js'
import type { BlobLocator, BlobSource } from './types.js'

/** Peers that hold a blob, as found by the swarm. */
export interface SwarmPlan {
  readonly plan: ChunkPlan
  /** chunk hashes agreed by the peers that answered; undefined where none knows it yet */
  readonly table: readonly (string | undefined)[]
  readonly sources: readonly PeerSource[]
}

/** A peer as a chunk source, with the hashes it claims for the chunks it holds. */
export interface PeerSource extends ChunkSource {
  hashOf(index: number): string | undefined
}

/** What the transfer layer asks of the swarm (implemented by the composition root). */
export interface SwarmHooks {
  readonly chunkSize: number
  /** peers holding the blob, found within a short deadline; undefined when there are none */
  discover(digest: string, signal: AbortSignal): Promise<SwarmPlan | undefined>
  /** this node holds (part of) the blob now: announce it */
  announce(digest: string): void
  /** a peer sent bytes that failed verification */
  penalise(peerId: string): void
  /** the blob is complete and verified; its chunk table, for serving peers */
  completed(digest: string, table: readonly string[]): void
}

export interface SwarmDownloadOptions {
  locator: BlobLocator
  plan: SwarmPlan
  writer: BlobWriter
  download: Download
  origin: BlobSource
  swarm: SwarmHooks
  signal: AbortSignal
  logger: Logger
  /** bytes accepted from a source kind ('peer', 'origin'), with the peer's id */
  onFetched?(source: string, bytes: number, peer?: string): void
}

/**
 * Fetches a blob's chunks from the peers that hold them (and from origin where none does, or
 * where peers are too slow), writes them into the partial file as they come, extends the
 * contiguous prefix that waiting clients stream from, and commits once the whole blob matched
 * its digest.
 *
 * Trust: a chunk from a peer must hash to what that peer claims and agree with the table other
 * peers gave; that catches a bad peer early. It proves nothing about the blob: only the
 * commit's whole-blob digest check does, and nothing is committed, announced as complete or
 * served whole before it passed (see ChunkTable). On a mismatch every peer that contributed is
 * penalised and the download fails; the next request goes to origin without them.
 */
export async function runSwarmDownload(opts: SwarmDownloadOptions): Promise<void> {
  const { locator, plan, writer, download, swarm, signal } = opts
  const digest = locator.digest.value
  const state = new ChunkState(plan.plan, plan.table)
  download.chunks = state
  const table = [...plan.table]
  const contributors = new Set<string>()
  const pending = new Set<number>()
  let announced = false

  const verify = (index: number, bytes: Uint8Array, source: ChunkSource): boolean => {
    const { start, end } = chunkBounds(plan.plan, index)
    if (bytes.byteLength !== end - start) return false
    const hash = chunkHash(bytes)
    if (source.kind === 'origin') {
      // origin is the source of truth: a disagreeing table is false
      if (table[index] !== undefined && table[index] !== hash) return false
    } else {
      const claim = (source as PeerSource).hashOf(index)
      if (claim !== hash || (table[index] !== undefined && table[index] !== hash)) return false
    }
    table[index] = hash
    return true
  }

  const accept = async (index: number, bytes: Uint8Array): Promise<void> => {
    const { start } = chunkBounds(plan.plan, index)
    if (start === writer.written) {
      await writer.write(bytes)
      // take chunks that arrived early into the digest, in order
      for (let next = index + 1; pending.has(next); next++) {
        const b = chunkBounds(plan.plan, next)
        await writer.advance(b.end - b.start)
        pending.delete(next)
      }
    } else {
      await writer.writeAt(start, bytes)
      pending.add(index)
    }
    state.mark(index, table[index] as string)
    download.progress()
    if (!announced) {
      announced = true
      swarm.announce(digest)
    }
  }

  const scheduler = new ChunkScheduler({
    plan: plan.plan,
    verify,
    accept,
    peers: [...plan.sources],
    origin: new OriginChunkSource(opts.origin, locator, plan.plan),
    onBadPeer: (peer, index) => {
      opts.logger.warn({ peer, digest, chunk: index }, 'peer sent a chunk that failed verification: penalised')
      swarm.penalise(peer)
    },
    onChunk: (_index, source, bytes) => {
      if (source.kind === 'peer') contributors.add(source.id)
      opts.onFetched?.(source.kind, bytes, source.kind === 'peer' ? source.id : undefined)
    },
  })
  try {
    const result = await scheduler.run(signal)
    await writer.commit()
    opts.logger.info({ digest, size: plan.plan.size, bySource: Object.fromEntries(result.bySource), wasted: result.wasted }, 'blob fetched through the swarm')
  } catch (err) {
    if ((err as Error).name === 'DigestMismatchError' || err instanceof TableMismatchError) {
      opts.logger.warn({ digest, peers: [...contributors], err: (err as Error).message }, 'blob from peers failed its digest: peers penalised')
      for (const peer of contributors) swarm.penalise(peer)
    }
    throw err
  }
  swarm.completed(digest, table as string[])
}
