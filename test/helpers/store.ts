// Helpers for store tests: put bytes into a BlobStore the way a download does.
import { createHash } from 'node:crypto'
import { parseDigest } from '../../src/oci/digest.js'
import type { BlobStore } from '../../src/store/blob-store.js'

export function sha256Of(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

/** writes, verifies and commits bytes; returns their digest */
export async function putBlob(store: BlobStore, bytes: Buffer): Promise<string> {
  const digest = parseDigest(sha256Of(bytes))
  const w = await store.createWriter(digest, bytes.length)
  await w.write(bytes)
  await w.commit()
  await w.close()
  return digest.value
}
