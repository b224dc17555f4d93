import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { isDigest, parseDigest } from '../../src/oci/digest.js'
import { OciError } from '../../src/oci/errors.js'
import { parseV2Path } from '../../src/oci/path.js'
import { isValidName, isValidRegistryHost, isValidTag, looksLikeHost } from '../../src/oci/reference.js'

const HEX = 'a'.repeat(64)

describe('digest grammar', () => {
  test('accepts sha256 and sha512 of the right length', () => {
    assert.equal(parseDigest(`sha256:${HEX}`).hex, HEX)
    assert.equal(parseDigest(`sha512:${'b'.repeat(128)}`).algorithm, 'sha512')
  })
  for (const bad of ['sha256:totallywrong', `sha256:${'A'.repeat(64)}`, `sha256:${HEX}0`, `md5:${HEX}`, 'sha256:', ':abc', `sha256:${HEX.slice(1)}`]) {
    test(`refuses ${bad.slice(0, 24)} with DIGEST_INVALID`, () => {
      assert.equal(isDigest(bad), false)
      assert.throws(() => parseDigest(bad), (err: unknown) => err instanceof OciError && err.code === 'DIGEST_INVALID' && err.status === 400)
    })
  }
})

describe('name and tag grammar', () => {
  test('names', () => {
    for (const ok of ['alpine', 'library/alpine', 'a/b/c', 'my-app', 'my__app', 'a.b', 'x0/y--z']) assert.ok(isValidName(ok), ok)
    for (const bad of ['', 'Alpine', 'a//b', '/a', 'a/', 'a..b', '-a', 'a-', 'a_b_', '..', 'a/../b', 'a:b', `${'a'.repeat(256)}`]) {
      assert.ok(!isValidName(bad), bad)
    }
  })
  test('tags', () => {
    for (const ok of ['latest', 'v1.2.3', '_x', 'A-b_c.d', 'a'.repeat(128)]) assert.ok(isValidTag(ok), ok)
    for (const bad of ['', '.x', '-x', 'a'.repeat(129), 'a/b', 'a:b', 'a b']) assert.ok(!isValidTag(bad), bad)
  })
  test('registry hosts', () => {
    for (const ok of ['docker.io', '127.0.0.1:5000', 'localhost', 'localhost:5000', 'my-reg.example.com:443', '[::1]:5000']) {
      assert.ok(isValidRegistryHost(ok), ok)
    }
    for (const bad of ['', 'a/b', 'http://x', 'a b', 'x:99999999', '-x.com']) assert.ok(!isValidRegistryHost(bad), bad)
    assert.ok(looksLikeHost('docker.io') && looksLikeHost('localhost') && looksLikeHost('h:5000'))
    assert.ok(!looksLikeHost('library'))
  })
})

describe('/v2 path parsing', () => {
  test('endpoints', () => {
    assert.deepEqual(parseV2Path('/v2/'), { kind: 'base' })
    assert.deepEqual(parseV2Path('/v2'), { kind: 'base' })
    assert.deepEqual(parseV2Path('/v2/a/b/manifests/v1'), { kind: 'manifest', segments: ['a', 'b'], reference: 'v1' })
    assert.deepEqual(parseV2Path(`/v2/a/blobs/sha256:${HEX}`), { kind: 'blob', segments: ['a'], digest: `sha256:${HEX}` })
    assert.deepEqual(parseV2Path('/v2/docker.io/library/x/tags/list'), { kind: 'tags', segments: ['docker.io', 'library', 'x'] })
    assert.deepEqual(parseV2Path(`/v2/a/referrers/sha256:${HEX}`), { kind: 'referrers', segments: ['a'], digest: `sha256:${HEX}` })
  })
  test('a repository may itself be named like an endpoint keyword', () => {
    assert.deepEqual(parseV2Path('/v2/blobs/manifests/v1'), { kind: 'manifest', segments: ['blobs'], reference: 'v1' })
  })
  for (const bad of ['/v2/a/../blobs/x', '/v2/a/%2e%2e/manifests/v1', '/v2/a%2Fb/manifests/v1', '/v2//a/manifests/v1', '/v2/./a/manifests/v1']) {
    test(`refuses traversal and encoding: ${bad}`, () => {
      assert.throws(() => parseV2Path(bad), (err: unknown) => err instanceof OciError && err.status === 400)
    })
  }
  for (const unknown of ['/v2/a', '/v2/a/blobs/uploads', '/v2/a/foo/bar', '/v3/a/manifests/x', '/v2/manifests/v1']) {
    test(`unknown endpoint ${unknown} is a 404`, () => {
      assert.throws(() => parseV2Path(unknown), (err: unknown) => err instanceof OciError && err.status === 404)
    })
  }
})
