import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  bearerToken,
  bitfield,
  decodeInfo,
  decodeTicket,
  encodeInfo,
  encodeTicket,
  encodeTicketError,
  MAX_KNOWN_CHUNKS,
  MAX_NEAR_PEERS,
  parseBearer,
  parsePath,
  blobPath
} from '../../src/peer/protocol.js'
import { TicketBook } from '../../src/peer/ticket.js'

describe('peer data: ticket book', () => {
  it('issues random tickets bound to a peer, valid until expiry', () => {
    let now = 1_000
    const book = new TicketBook({ ttlMs: 60_000, now: () => now })
    const t = book.issue('peerA', true)
    assert.match(t.identity, /^[0-9a-f]{32}$/)
    assert.equal(t.key.length, 32)
    assert.equal(t.peerId, 'peerA')
    assert.notEqual(book.issue('peerA', true).identity, t.identity)
    assert.equal(book.get(t.identity), t)
    now += 59_999
    assert.equal(book.get(t.identity), t)
    now += 1
    assert.equal(book.get(t.identity), undefined, 'expired')
    assert.equal(book.get('0'.repeat(32)), undefined)
  })

  it('checks bearer keys and the mode they were issued for', () => {
    const book = new TicketBook()
    const t = book.issue('peerA', false)
    const key = t.key.toString('hex')
    assert.equal(book.verifyBearer(t.identity, key, false), t)
    assert.equal(book.verifyBearer(t.identity, key, true), undefined, 'a plaintext ticket is not a TLS ticket')
    assert.equal(book.verifyBearer(t.identity, 'f'.repeat(64), false), undefined)
    assert.equal(book.verifyBearer(t.identity, 'abc', false), undefined)
    const parsed = parseBearer(bearerToken(t.identity, key))
    assert.deepEqual(parsed, { identity: t.identity, key })
    for (const bad of [undefined, '', 'Basic x', `Bearer ${t.identity}`, `Bearer ${t.identity}.${key}x`, `bearer ${t.identity}.${key}`]) {
      assert.equal(parseBearer(bad), undefined, String(bad))
    }
  })

  it('bounds live tickets per peer and overall, oldest first', () => {
    const book = new TicketBook({ maxPerPeer: 2, maxTickets: 3 })
    const [a1, a2, a3] = [book.issue('a', true), book.issue('a', true), book.issue('a', true)]
    assert.equal(book.get(a1.identity), undefined)
    assert.ok(book.get(a2.identity) && book.get(a3.identity))
    const b1 = book.issue('b', true)
    const c1 = book.issue('c', true)
    assert.equal(book.size, 3)
    assert.equal(book.get(a2.identity), undefined, 'the oldest overall went')
    assert.ok(book.get(b1.identity) && book.get(c1.identity))
  })

  it('sweeps expired tickets', () => {
    let now = 0
    const book = new TicketBook({ ttlMs: 10, now: () => now })
    for (let i = 0; i < 5; i++) book.issue(`p${i}`, true)
    now = 10
    book.issue('late', true)
    assert.equal(book.size, 1)
  })
})

describe('peer data: wire formats', () => {
  it('round-trips a ticket and rejects malformed ones', () => {
    const wire = { tls: true, port: 4002, identity: 'a'.repeat(32), key: 'b'.repeat(64), ttlMs: 600_000, known: true }
    assert.deepEqual(decodeTicket(encodeTicket(wire)), wire)
    // a ticket of a node of an older version: it takes no `known`
    const { known: _, ...older } = wire
    assert.deepEqual(decodeTicket(encodeTicket(older)), { ...older, known: false })
    const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v))
    for (const bad of [
      { ...wire, v: 2 },
      { v: 1, ...wire, port: 0 },
      { v: 1, ...wire, port: 70000 },
      { v: 1, ...wire, identity: 'A'.repeat(32) },
      { v: 1, ...wire, key: 'b'.repeat(63) },
      { v: 1, ...wire, tls: 'yes' },
      { v: 1, ...wire, ttlMs: 5 },
      [1]
    ]) {
      assert.throws(() => decodeTicket(enc(bad)), JSON.stringify(bad))
    }
    assert.throws(() => decodeTicket(new Uint8Array([0xff, 0xfe])))
    assert.throws(() => decodeTicket(encodeTicketError('nope')), /nope/)
  })

  it('round-trips blob info as a bitfield and validates a peer’s info', () => {
    const have = [true, false, true, true, false, false, false, true, true, false]
    const info = { size: 10 * 100 - 7, chunkSize: 100, have, table: have.map((_, i) => 'abcdef0123'[i]!.repeat(64)) }
    assert.deepEqual(decodeInfo(encodeInfo(info)), info)
    const noTable = { size: 0, chunkSize: 4, have: [] }
    assert.deepEqual(decodeInfo(encodeInfo(noTable)), noTable)
    const good = JSON.parse(encodeInfo(info)) as Record<string, unknown>
    for (const patch of [
      { size: -1 },
      { size: 1.5 },
      { chunkSize: 0 },
      { size: 2 ** 40, chunkSize: 1 },
      { have: 'AAAA' },
      { have: '%%%' },
      { table: ['x'] },
      { table: 'nope' },
      { table: (info.table as string[]).map((t) => t.toUpperCase()) }
    ]) {
      assert.throws(() => decodeInfo(JSON.stringify({ ...good, ...patch })), JSON.stringify(patch))
    }
    assert.throws(() => decodeInfo('not json'))
    assert.throws(() => decodeInfo('[]'))
  })

  it('leaves out the hashes the asker knows, and accepts their absence only where it said so', () => {
    const have = [true, false, true, true, false, false, false, true, true, false]
    const info = { size: 10 * 100 - 7, chunkSize: 100, have, table: have.map((held, i) => (held ? 'abcdef0123'[i]!.repeat(64) : '')) }
    const known = bitfield([true, false, true, false, false, false, false, false, true])
    const text = encodeInfo(info, known)
    const sent = JSON.parse(text) as { table?: string[]; added: [number, string][] }
    assert.equal(sent.table, undefined, 'no table: it grows with the blob')
    assert.deepEqual(sent.added, [3, 7].map((i) => [i, info.table[i]]), 'the held chunks but 0, 2 and 8, with their hashes')
    const decoded = decodeInfo(text, known)
    assert.deepEqual(decoded.have, have)
    assert.deepEqual(decoded.table, info.table.map((hash, i) => ([0, 2, 8].includes(i) ? '' : hash)), 'a table with the known hashes empty')
    assert.throws(() => decodeInfo(text), /64 hex/, 'an absent hash for a held chunk the asker did not name')
    assert.throws(() => decodeInfo(text, bitfield([true, false, true])), /64 hex/, 'nor one it did not name known')
    const wire = JSON.parse(text) as Record<string, unknown>
    for (const added of [[[7, info.table[7]], [3, info.table[3]]], [[3, info.table[3]], [10, 'a'.repeat(64)]], [[3.5, info.table[3]]], [[3]], 'nope', [[3, 'x']]]) {
      assert.throws(() => decodeInfo(JSON.stringify({ ...wire, added }), known), /added|64 hex/, JSON.stringify(added))
    }
    // on the wire: the bitfield rides in the query, up to MAX_KNOWN_CHUNKS chunks
    const d = `sha256:${'a'.repeat(64)}`
    const parsed = parsePath(blobPath(d, { held: 6, known }))
    assert.ok(parsed?.kind === 'info')
    assert.deepEqual(parsed.known && [...parsed.known], [...known])
    const most = bitfield(new Array(MAX_KNOWN_CHUNKS).fill(true))
    assert.deepEqual((parsePath(blobPath(d, { held: 1, known: most })) as { known?: Uint8Array }).known?.length, most.length)
    assert.equal(blobPath(d, { held: 1, known: bitfield(new Array(MAX_KNOWN_CHUNKS + 8).fill(true)) }), blobPath(d, { held: 1 }), 'larger: not sent')
    for (const bad of [`/shoal/v1/blobs/${d}?known=a+b`, `/shoal/v1/blobs/${d}?known=`, `/shoal/v1/blobs/${d}?known=AA&known=AA`]) {
      assert.equal(parsePath(bad), undefined, bad)
    }
  })

  it('checks what it writes, and only that: a provider’s bad hash never reaches the peer, a long poll’s answer does not walk the table', () => {
    const have = [true, false, true, true, false, false, false, true, true, false]
    const table = have.map((held, i) => (held ? 'abcdef0123'[i]!.repeat(64) : ''))
    const info = { size: 10 * 100 - 7, chunkSize: 100, have, table }
    const known = bitfield([true, false, true, false, false, false, false, false, true])
    // a bad hash of a chunk it would name: to the asker that knows some chunks, and to one that knows none
    for (const bad of ['', 'A'.repeat(64), 'a'.repeat(63)]) {
      const broken = { ...info, table: table.map((hash, i) => (i === 7 ? bad : hash)) }
      assert.throws(() => encodeInfo(broken, known), /64 hex/, `named in added: ${JSON.stringify(bad)}`)
      assert.throws(() => encodeInfo(broken), /64 hex/, `named in the table: ${JSON.stringify(bad)}`)
    }
    // a bad hash of a chunk the asker knows is not named, so not walked
    const knownBad = { ...info, table: table.map((hash, i) => (i === 2 ? 'not a hash' : hash)) }
    assert.deepEqual((JSON.parse(encodeInfo(knownBad, known)) as { added: [number, string][] }).added.map(([i]) => i), [3, 7])
    for (const shape of [{ size: -1 }, { chunkSize: 0 }, { have: have.slice(1) }, { table: table.slice(1) }]) {
      assert.throws(() => encodeInfo({ ...info, ...shape }, known), JSON.stringify(shape))
      assert.throws(() => encodeInfo({ ...info, ...shape }), JSON.stringify(shape))
    }
  })

  it('round-trips the peers near a blob’s key, and rejects what is not a short list of peer ids', () => {
    const ids = Array.from({ length: MAX_NEAR_PEERS + 1 }, (_, i) => `12D3KooW${'ABCDEFGHJKLMNPQRSTUVWXYZ'[i]!.repeat(44)}`)
    const near = ids.slice(0, MAX_NEAR_PEERS)
    const info = { size: 10, chunkSize: 4, have: [true, false, false], near }
    assert.deepEqual(decodeInfo(encodeInfo(info)).near, near)
    // a node that has not begun on the blob: no chunks, only the peers near its key
    const notBegun = { size: 0, chunkSize: 4, have: [], near: near.slice(0, 2) }
    assert.deepEqual(decodeInfo(encodeInfo(notBegun)), notBegun)
    assert.equal(decodeInfo(encodeInfo({ ...info, near: [] })).near, undefined, 'an empty list is left out')
    assert.equal((JSON.parse(encodeInfo({ ...info, near: ids })) as { near: string[] }).near.length, MAX_NEAR_PEERS, 'cut to the most a peer accepts')
    const good = JSON.parse(encodeInfo(info)) as Record<string, unknown>
    for (const near of [ids, ['not a peer id'], [42], 'nope', [`${ids[0]}0OIl`]]) {
      assert.throws(() => decodeInfo(JSON.stringify({ ...good, near })), /bad near/, JSON.stringify(near))
    }
  })

  it('parses data-port paths', () => {
    const d = `sha256:${'a'.repeat(64)}`
    assert.deepEqual(parsePath(`/shoal/v1/blobs/${d}`), { kind: 'info', digest: d })
    assert.deepEqual(parsePath(`/shoal/v1/blobs/${d}/chunks/12`), { kind: 'chunk', digest: d, index: 12 })
    assert.deepEqual(parsePath(blobPath(d, { want: 'r.io:5000/a/b', held: 3 })), { kind: 'info', digest: d, want: 'r.io:5000/a/b', held: 3 })
    assert.deepEqual(parsePath(blobPath(d, { held: 0 })), { kind: 'info', digest: d, held: 0 })
    for (const bad of [`/shoal/v1/blobs/${d}?held=1&held=2`, `/shoal/v1/blobs/${d}?held=-1`, `/shoal/v1/blobs/${d}?held=12345678`, `/shoal/v1/blobs/${d}?want`, `/shoal/v1/blobs/${d}/chunks/1?held=1`]) {
      assert.equal(parsePath(bad), undefined, bad)
    }
    for (const bad of ['/', `/shoal/v1/blobs/${d}/`, `/shoal/v1/blobs/${d}/chunks/`, `/shoal/v1/blobs/${d}/chunks/1x`, `/shoal/v1/blobs/${d}?a=b`, `/shoal/v1/blobs/${d}/chunks/12345678901`]) {
      assert.equal(parsePath(bad), undefined, bad)
    }
  })
})
