import type { Logger } from 'pino'
import type { ContentRouter, PeerRef } from '../routing/types.js'
import { type ChunkPlan, planChunks } from '../transfer/chunks/plan.js'
import type { SwarmPlan } from '../transfer/swarm-download.js'
import type { PeerPenalties } from './penalties.js'
import { PeerChunkSource } from './peer-source.js'
import type { PeerBlobInfo, PeerChunkClient } from './types.js'
import { timeoutSignal } from '../util/abort.js'


export interface DiscoverOptions {
  router: ContentRouter
  client: PeerChunkClient
  penalties: PeerPenalties
  logger: Logger
  /** the node's own chunk size: peers with another are not used for this blob */
  chunkSize: number
  lookupTimeoutMs: number
  infoTimeoutMs: number
  maxPeers: number
  signal: AbortSignal
  /** peers already in use: not asked again */
  known?: ReadonlySet<string>
}

/**
 * Finds peers holding a blob and what each holds, within a short deadline: never waits long on
 * an empty or slow DHT. The first usable answer fixes the blob's size (unverified until the
 * whole blob hashes to its digest; a peer lying about it only makes the download fail over to
 * origin). Peers whose answer does not fit (another size or chunk size, or a table that
 * contradicts the one adopted from earlier answers) are left out for this blob.
 */
export async function discoverPeers(digest: string, opts: DiscoverOptions): Promise<SwarmPlan | undefined> {
  if (!opts.router.ready()) return undefined
  let plan: ChunkPlan | undefined
  let table: (string | undefined)[] = []
  const sources: PeerChunkSource[] = []
  const deadline = timeoutSignal(opts.lookupTimeoutMs + opts.infoTimeoutMs, opts.signal)
  const asks: Promise<void>[] = []
  const ask = async (peer: PeerRef): Promise<void> => {
    let info: PeerBlobInfo | undefined
    try {
      info = await opts.client.info(peer, digest, { signal: timeoutSignal(opts.infoTimeoutMs, deadline) })
    } catch (err) {
      opts.logger.debug({ peer: peer.id, digest, err: (err as Error).message }, 'peer info failed')
      return
    }
    if (info === undefined || info.chunkSize !== opts.chunkSize || !Number.isSafeInteger(info.size) || info.size < 0) return
    if (plan === undefined) {
      plan = planChunks(info.size, opts.chunkSize)
      table = new Array(plan.count).fill(undefined)
    }
    if (info.size !== plan.size || info.have.length !== plan.count) return
    if (!adoptTable(table, info)) {
      opts.logger.warn({ peer: peer.id, digest }, 'peer chunk table contradicts the others: not used')
      return
    }
    if (!info.have.some(Boolean)) return
    sources.push(new PeerChunkSource(peer, info, opts.client, digest, opts.signal))
  }
  try {
    for await (const peer of opts.router.lookup(digest, { signal: deadline, limit: opts.maxPeers, timeoutMs: opts.lookupTimeoutMs })) {
      if (opts.penalties.isPenalised(peer.id) || opts.known?.has(peer.id)) continue
      asks.push(ask(peer))
    }
  } catch (err) {
    opts.logger.debug({ digest, err: (err as Error).message }, 'lookup failed')
  }
  await Promise.all(asks)
  if (sources.length === 0 || plan === undefined) return undefined
  return { plan, table, sources }
}

/** Merges a peer's table entries into the adopted table; false (and no change) on a conflict. */
export function adoptTable(table: (string | undefined)[], info: PeerBlobInfo): boolean {
  const entries = info.table ?? []
  const theirs = (i: number): string | undefined => {
    const v = entries[i]
    return isHex(v) ? v : undefined
  }
  for (let i = 0; i < table.length; i++) {
    const h = theirs(i)
    if (info.have[i] && h === undefined) return false
    if (h !== undefined && table[i] !== undefined && table[i] !== h) return false
  }
  for (let i = 0; i < table.length; i++) table[i] = theirs(i) ?? table[i]
  return true
}

function isHex(v: unknown): v is string {
  return typeof v === 'string' && /^[a-f0-9]{64}$/.test(v)
}
