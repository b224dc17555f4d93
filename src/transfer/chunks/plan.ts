import { createHash } from 'node:crypto'

/** Default chunk size: large enough that per-request costs vanish, small enough to spread a layer. */
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024

/** How a blob of `size` bytes splits into fixed-size chunks (the last one may be shorter). */
export interface ChunkPlan {
  readonly size: number
  readonly chunkSize: number
  readonly count: number
}

export function planChunks(size: number, chunkSize = DEFAULT_CHUNK_SIZE): ChunkPlan {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad blob size ${size}`)
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) throw new RangeError(`bad chunk size ${chunkSize}`)
  return { size, chunkSize, count: Math.max(1, Math.ceil(size / chunkSize)) }
}

/** Byte range of chunk `index`: start inclusive, end exclusive. */
export function chunkBounds(plan: ChunkPlan, index: number): { start: number; end: number } {
  if (!Number.isInteger(index) || index < 0 || index >= plan.count) throw new RangeError(`chunk ${index} out of range`)
  const start = index * plan.chunkSize
  return { start, end: Math.min(plan.size, start + plan.chunkSize) }
}

export function chunkHash(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

/**
 * The chunk table of a blob: the sha256 of each chunk, computed by whoever fetched the blob from
 * origin, identical on every honest node.
 *
 * Why no peer can make a node accept wrong bytes: a table is only a hint. Chunks are checked
 * against it as they arrive (so a bad peer is caught early and cheaply), but nothing is
 * committed, served as complete or announced until the whole blob hashed to its OCI digest,
 * which the node got from the manifest it verified itself. A lying table, or lying chunks that
 * match a lying table, therefore end in a digest mismatch: the table is thrown away and the
 * blob fetched from origin. The worst a peer can do is waste bandwidth, and it is penalised.
 */
export class ChunkTable {
  readonly plan: ChunkPlan
  readonly hashes: readonly string[]

  constructor(plan: ChunkPlan, hashes: readonly string[]) {
    if (hashes.length !== plan.count) throw new RangeError(`table has ${hashes.length} entries for ${plan.count} chunks`)
    for (const h of hashes) if (!/^[a-f0-9]{64}$/.test(h)) throw new RangeError('table entries must be sha256 hex')
    this.plan = plan
    this.hashes = hashes
  }

  verify(index: number, bytes: Uint8Array): boolean {
    const { start, end } = chunkBounds(this.plan, index)
    return bytes.byteLength === end - start && chunkHash(bytes) === this.hashes[index]
  }
}
