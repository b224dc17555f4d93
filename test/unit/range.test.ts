import assert from 'node:assert/strict'
import { test } from 'node:test'
import { parseRange } from '../../src/registry/range.js'

// The OCI conformance suite's cases on a 2048-byte blob, plus RFC 9110 edge cases.
test('single ranges against a 2048-byte blob', () => {
  assert.deepEqual(parseRange('bytes=500-1499', 2048), { start: 500, end: 1499 })
  assert.deepEqual(parseRange('bytes=500-', 2048), { start: 500, end: 2047 })
  assert.deepEqual(parseRange('bytes=-500', 2048), { start: 1548, end: 2047 })
  assert.deepEqual(parseRange('bytes=2000-5000', 2048), { start: 2000, end: 2047 })
  assert.deepEqual(parseRange('bytes=-5000', 2048), { start: 0, end: 2047 })
  assert.deepEqual(parseRange('bytes=0-0', 2048), { start: 0, end: 0 })
  assert.deepEqual(parseRange('bytes=2047-2047', 2048), { start: 2047, end: 2047 })
})

test('unsatisfiable ranges', () => {
  assert.equal(parseRange('bytes=500-0', 2048), 'unsatisfiable')
  assert.equal(parseRange('bytes=5000-10000', 2048), 'unsatisfiable')
  assert.equal(parseRange('bytes=2048-', 2048), 'unsatisfiable')
  assert.equal(parseRange('bytes=-0', 2048), 'unsatisfiable')
  assert.equal(parseRange('bytes=0-', 0), 'unsatisfiable')
  assert.equal(parseRange('bytes=99999999999999999999-', 2048), 'unsatisfiable')
})

test('headers that are ignored (whole body)', () => {
  for (const h of [undefined, '', 'bytes=', 'bytes=-', 'items=0-1', 'bytes=0-1,5-6', 'bytes=a-b', 'bytes 0-1', 'bytes=1-2-3']) {
    assert.equal(parseRange(h, 2048), undefined, String(h))
  }
})
