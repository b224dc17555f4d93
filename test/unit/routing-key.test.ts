import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import { CID } from 'multiformats/cid'
import { cidToDigest, digestToCid } from '../../src/routing/key.js'
import { InvalidDigestError } from '../../src/routing/types.js'

const EMPTY_SHA256 = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
// the CID IPFS gives the empty raw block: the same key, derived independently
const EMPTY_CID = 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku'

function sha256Digest(data: string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

describe('routing key', () => {
  it('maps the empty blob to the well-known raw CID', () => {
    assert.equal(digestToCid(EMPTY_SHA256).toString(), EMPTY_CID)
  })

  it('is a CIDv1, raw codec, sha2-256 multihash of the digest bytes (no re-hashing)', () => {
    const digest = sha256Digest('layer')
    const cid = digestToCid(digest)
    assert.equal(cid.version, 1)
    assert.equal(cid.code, 0x55)
    assert.equal(cid.multihash.code, 0x12)
    assert.equal(cid.multihash.size, 32)
    assert.equal(Buffer.from(cid.multihash.digest).toString('hex'), digest.slice('sha256:'.length))
    // kad-dht keys provider records by these bytes: 0x12 0x20 <32 bytes>
    assert.deepEqual([...cid.multihash.bytes.subarray(0, 2)], [0x12, 0x20])
    assert.equal(cid.multihash.bytes.length, 34)
  })

  it('is pure: same digest, same key; different digests, different keys', () => {
    const a = sha256Digest('a')
    assert.ok(digestToCid(a).equals(digestToCid(a)))
    assert.equal(digestToCid(a).toString(), digestToCid(a).toString())
    assert.ok(!digestToCid(a).equals(digestToCid(sha256Digest('b'))))
  })

  it('round-trips through cidToDigest and the CID string form', () => {
    const digest = sha256Digest('config')
    assert.equal(cidToDigest(digestToCid(digest)), digest)
    assert.equal(cidToDigest(CID.parse(digestToCid(digest).toString())), digest)
  })

  it('maps sha512 digests to multihash 0x13', () => {
    const digest = `sha512:${createHash('sha512').update('x').digest('hex')}`
    const cid = digestToCid(digest)
    assert.equal(cid.multihash.code, 0x13)
    assert.equal(cid.multihash.size, 64)
    assert.equal(cidToDigest(cid), digest)
  })

  it('rejects malformed digests with InvalidDigestError', () => {
    const hex = EMPTY_SHA256.slice('sha256:'.length)
    for (const bad of [
      '',
      hex,
      `sha256:${hex.toUpperCase()}`,
      `sha256:${hex.slice(1)}`,
      `sha256:${hex}0`,
      `sha256:${hex} `,
      ` sha256:${hex}`,
      `md5:${hex}`,
      `SHA256:${hex}`,
      `sha256:${'g'.repeat(64)}`,
      `sha512:${hex}`
    ]) {
      assert.throws(
        () => digestToCid(bad),
        (err: unknown) => err instanceof InvalidDigestError && err.code === 'ERR_INVALID_DIGEST',
        JSON.stringify(bad)
      )
    }
  })
})
