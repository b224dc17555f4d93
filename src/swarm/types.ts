import type { PeerRef } from '../routing/types.js'

/** What a peer says about a blob it holds (in part). */
export interface PeerBlobInfo {
  size: number
  chunkSize: number
  /** per-chunk sha256 (hex) where the peer knows it; it knows it for every chunk it holds */
  table?: (string | undefined | null)[]
  /** chunks the peer holds verified */
  have: boolean[]
  /** bytes its download in progress received from origin so far */
  received?: number
  /** other nodes fetching the blob that the peer knows of (peer exchange) */
  peers?: string[]
  /** the nodes the peer knows nearest the blob's DHT key, itself included (answers to `want` asks) */
  near?: string[]
}

/** The part of the peer data plane the swarm needs. */
export interface PeerChunkClient {
  /**
   * `want` (`registry/name`): ask the peer to start fetching the blob (it is one of its origin
   * fetchers); `held`: answer once the peer holds more chunks than that (a long poll); `known`:
   * the chunks (a bitfield) whose hashes this node has from the peer, left out of the answer's
   * table; `waitMs`: the most the answer may take
   */
  info(
    peer: PeerRef,
    digest: string,
    options: { signal: AbortSignal; want?: string | undefined; held?: number | undefined; known?: Uint8Array | undefined; waitMs?: number | undefined },
  ): Promise<PeerBlobInfo | undefined>
  /** fills `into` (the chunk's length) with the chunk's raw bytes */
  fetchChunk(peer: PeerRef, digest: string, index: number, options: { signal: AbortSignal; into: Buffer }): Promise<void>
}
