/**
 * Wire formats of the peer data plane (pure, no I/O).
 *
 * 1. Ticket, over libp2p (`/shoal/data-ticket/1.0.0`, Noise-authenticated, so each side knows
 *    the other's peer id): the requester writes one JSON request and closes its write side; the
 *    server answers one JSON ticket and closes. At most `MAX_TICKET_MESSAGE_BYTES` each way.
 *      request  {"v":1}
 *      response {"v":1,"tls":true,"port":40123,"identity":"<32 hex>","key":"<64 hex>","ttlMs":600000,"known":true}
 *             | {"v":1,"error":"..."}
 *    The server binds the ticket to the requester's peer id. The key never travels anywhere
 *    else: Noise carried it, with forward secrecy.
 * 2. Bulk bytes, HTTP/1.1 on the data port (a separate TCP listener, no yamux):
 *    - tls: TLS 1.2 with a pre-shared key (PSK identity = ticket identity, PSK = ticket key,
 *      cipher PSK-AES128-GCM-SHA256): only the two holders of the key complete the handshake,
 *      so both ends are authenticated as the libp2p peers that exchanged the ticket, and the
 *      bytes are encrypted (AES-GCM, AES-NI).
 *    - plaintext: `Authorization: Bearer <identity>.<key>` on every request: still
 *      authenticated (the token came over Noise), not confidential.
 *    Routes (GET only):
 *      /shoal/v1/blobs/<digest>[?want=<registry/name>][&held=<n>][&known=<bitfield, base64url>]
 *                                                → 200 application/json (encodeInfo) | 404
 *        `held=n` (a long poll): the answer waits, up to a few seconds, until the node holds
 *        more than n chunks, so a peer learns of each chunk as it lands without polling
 *        `want` without `held` (an asker choosing its origin fetchers): the answer also names
 *        `near`, the peers the node knows nearest the blob's DHT key, itself included (at most
 *        MAX_NEAR_PEERS), so that an asker whose DHT query missed some of them ranks the same
 *        nodes first as the rest. A node that has not begun on the blob does not know its size
 *        yet: it answers no chunks (size 0, an empty `have`) with `near`, where it answered 404
 *        before; an asker tells that from holdings by the size it plans with.
 *        `known`: the chunks whose hashes the asker already has from this node; the answer
 *        then names the hashes of the other chunks held (`added`, [index, hash] pairs) instead
 *        of the table. A long poll's answer otherwise repeats the whole table
 *        for every chunk the node gains: for a blob of c chunks, c answers of c hashes each per
 *        asker (a 10 GiB layer's table is 700 KB). Only sent to a node whose ticket says
 *        `known` (a node of an older version answers an unknown parameter 404).
 *      /shoal/v1/blobs/<digest>/chunks/<index>   → 200 application/octet-stream | 404 | 416 | 503
 */
import type { BlobInfo } from './types.js'

export const TICKET_PROTOCOL = '/shoal/data-ticket/1.0.0'
export const WIRE_VERSION = 1
export const MAX_TICKET_MESSAGE_BYTES = 4 * 1024
/**
 * TLS 1.2 PSK cipher suite: the fastest of the PSK suites' ciphers on AES-NI hardware
 * (`openssl speed -seconds 1 -bytes 16384 -evp aes-128-gcm`, then chacha20-poly1305 and
 * aes-256-gcm: 2.4, 1.9 and 1.7 GB/s on one core of the 2-core VM the benches run on)
 */
export const PSK_CIPHERS = 'PSK-AES128-GCM-SHA256'
export const TLS_VERSION = 'TLSv1.2'
export const TICKET_IDENTITY_BYTES = 16
export const TICKET_KEY_BYTES = 32
/**
 * A chunk of at most a sixteenth of its blob's chunk size (64 KiB at 1 MiB: an image config, a
 * blob's short last chunk) is uploaded without an upload slot, into a buffer of its own size.
 */
export function isSmallChunk(length: number, chunkSize: number): boolean {
  return length <= chunkSize / 16
}
/** a blob with more chunks than this is refused (bounds what a peer can make us allocate) */
export const MAX_CHUNKS = 1 << 20
/** peer ids an info answer names at most (peer exchange) */
export const MAX_EXCHANGED_PEERS = 16
/** peer ids an info answer names at most as nearest the blob's key */
export const MAX_NEAR_PEERS = 16
/** a request names the chunks it knows (`known`) for blobs of at most this many chunks (its query stays short) */
export const MAX_KNOWN_CHUNKS = 32_768
/** upper bound of an info response body */
export const MAX_INFO_BYTES = 256 + MAX_CHUNKS * 67 + MAX_CHUNKS / 8 * 1.4 + (MAX_EXCHANGED_PEERS + MAX_NEAR_PEERS) * 70

const IDENTITY_RE = /^[0-9a-f]{32}$/
const KEY_RE = /^[0-9a-f]{64}$/
const SHA256_HEX_RE = /^[0-9a-f]{64}$/
const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/
const BEARER_RE = /^Bearer ([0-9a-f]{32})\.([0-9a-f]{64})$/
const PATH_RE = /^\/shoal\/v1\/blobs\/([^/?]{1,200})(?:\/chunks\/(\d{1,10})|\?([A-Za-z0-9%._=&-]{1,6400}))?$/
/** a libp2p peer id in its base58btc string form */
const PEER_ID_RE = /^[1-9A-HJ-NP-Za-km-z]{40,64}$/
const WANT_RE = /^[A-Za-z0-9%._-]{1,600}$/
const HELD_RE = /^\d{1,7}$/
const KNOWN_RE = new RegExp(`^[A-Za-z0-9_-]{1,${Math.ceil((MAX_KNOWN_CHUNKS / 8) * (4 / 3))}}$`)

/** Options of an info request. */
export interface InfoQuery {
  /** `registry/name`: asks the peer to fetch the blob as one of its origin fetchers */
  want?: string | undefined
  /** answer once the peer holds more than this many chunks (or after a few seconds) */
  held?: number | undefined
  /** bitfield (see `bitfield`) of the chunks whose hashes the asker has from this peer: answered without them */
  known?: Uint8Array | undefined
}

/** `known` as a request sends it: undefined when empty, or too large for the path (the blob has over MAX_KNOWN_CHUNKS chunks) */
export function sentKnown(known: Uint8Array | undefined): Uint8Array | undefined {
  return known !== undefined && known.length > 0 && known.length <= MAX_KNOWN_CHUNKS / 8 ? known : undefined
}

export function blobPath(digest: string, query: InfoQuery = {}): string {
  const params: string[] = []
  if (query.want !== undefined) params.push(`want=${encodeURIComponent(query.want)}`)
  if (query.held !== undefined) params.push(`held=${query.held}`)
  const known = sentKnown(query.known)
  if (known !== undefined) params.push(`known=${Buffer.from(known.buffer, known.byteOffset, known.byteLength).toString('base64url')}`)
  return params.length === 0 ? `/shoal/v1/blobs/${digest}` : `/shoal/v1/blobs/${digest}?${params.join('&')}`
}

export function chunkPath(digest: string, index: number): string {
  return `/shoal/v1/blobs/${digest}/chunks/${index}`
}

export type ParsedPath = ({ kind: 'info'; digest: string } & InfoQuery) | { kind: 'chunk'; digest: string; index: number }

/** parse a request path (a query string only on info: `want`, `held`, `known`); undefined when it matches no route. Digest grammar is checked by the caller. */
export function parsePath(url: string): ParsedPath | undefined {
  const m = PATH_RE.exec(url)
  if (m === null) return undefined
  const digest = m[1]!
  if (m[2] !== undefined) return { kind: 'chunk', digest, index: Number(m[2]) }
  const parsed: ParsedPath = { kind: 'info', digest }
  for (const param of m[3]?.split('&') ?? []) {
    const eq = param.indexOf('=')
    const key = param.slice(0, eq)
    const value = param.slice(eq + 1)
    if (key === 'want' && parsed.want === undefined && WANT_RE.test(value)) {
      try {
        parsed.want = decodeURIComponent(value)
      } catch {
        return undefined
      }
    } else if (key === 'held' && parsed.held === undefined && HELD_RE.test(value)) parsed.held = Number(value)
    else if (key === 'known' && parsed.known === undefined && KNOWN_RE.test(value)) parsed.known = Buffer.from(value, 'base64url')
    else return undefined
  }
  return parsed
}

export function chunkCount(size: number, chunkSize: number): number {
  return size === 0 ? 0 : Math.ceil(size / chunkSize)
}

/** byte length of chunk `index` */
export function chunkLength(info: Pick<BlobInfo, 'size' | 'chunkSize'>, index: number): number {
  return Math.min(info.chunkSize, info.size - index * info.chunkSize)
}

// ---------------------------------------------------------------- tickets

export interface TicketWire {
  tls: boolean
  port: number
  identity: string
  key: string
  ttlMs: number
  /** the server takes `known` on info requests */
  known?: boolean
}

export function encodeTicketRequest(): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ v: WIRE_VERSION }))
}

/** validates a ticket request; throws a plain Error with the reason */
export function decodeTicketRequest(bytes: Uint8Array): void {
  const value = parseJson(bytes)
  if (!isRecord(value) || value['v'] !== WIRE_VERSION) throw new Error('unsupported ticket request')
}

export function encodeTicket(ticket: TicketWire): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ v: WIRE_VERSION, ...ticket }))
}

export function encodeTicketError(error: string): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ v: WIRE_VERSION, error }))
}

/** validates a ticket response from a peer; throws a plain Error with the reason */
export function decodeTicket(bytes: Uint8Array): TicketWire {
  const value = parseJson(bytes)
  if (!isRecord(value) || value['v'] !== WIRE_VERSION) throw new Error('unsupported ticket response')
  if (typeof value['error'] === 'string') throw new Error(`peer refused a ticket: ${value['error'].slice(0, 200)}`)
  const { tls, port, identity, key, ttlMs, known } = value
  if (typeof tls !== 'boolean') throw new Error('ticket: tls is not a boolean')
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw new Error('ticket: bad port')
  if (typeof identity !== 'string' || !IDENTITY_RE.test(identity)) throw new Error('ticket: bad identity')
  if (typeof key !== 'string' || !KEY_RE.test(key)) throw new Error('ticket: bad key')
  if (typeof ttlMs !== 'number' || !Number.isInteger(ttlMs) || ttlMs < 1_000 || ttlMs > 24 * 3600_000) throw new Error('ticket: bad ttlMs')
  return { tls, port, identity, key, ttlMs, known: known === true }
}

export function bearerToken(identity: string, key: string): string {
  return `Bearer ${identity}.${key}`
}

export function parseBearer(header: string | undefined): { identity: string; key: string } | undefined {
  if (header === undefined) return undefined
  const m = BEARER_RE.exec(header)
  return m === null ? undefined : { identity: m[1]!, key: m[2]! }
}

export function isTicketIdentity(value: string): boolean {
  return IDENTITY_RE.test(value)
}

// ---------------------------------------------------------------- blob info

interface InfoWire {
  size: number
  chunkSize: number
  table?: string[]
  /** instead of `table`, to an asker that named the chunks it knows: [index, hash] of the others held, by index */
  added?: [number, string][]
  /** bitfield, chunk i = bit (7 - i % 8) of byte i / 8, base64 */
  have: string
  received?: number
  peers?: string[]
  near?: string[]
}

/** flags as a bitfield: flag i is bit (7 - i % 8) of byte i / 8 */
export function bitfield(flags: readonly boolean[]): Buffer {
  const bits = Buffer.alloc(Math.ceil(flags.length / 8))
  for (let i = 0; i < flags.length; i++) if (flags[i]) bits[i >> 3]! |= 0x80 >> (i & 7)
  return bits
}

/** the first `count` flags of a bitfield (a byte at a time: a long poll's answer decodes the blob's whole bitfield) */
function flags(bits: Uint8Array, count: number): boolean[] {
  const out = new Array<boolean>(count).fill(false)
  for (let byte = 0; byte < bits.length; byte++) {
    const b = bits[byte] as number
    if (b === 0) continue
    const first = byte * 8
    for (let i = first, mask = 0x80; mask !== 0 && i < count; i++, mask >>= 1) if ((b & mask) !== 0) out[i] = true
  }
  return out
}

function isSet(bits: Uint8Array | undefined, i: number): boolean {
  return bits !== undefined && ((bits[i >> 3] ?? 0) & (0x80 >> (i & 7))) !== 0
}

/**
 * Checks a provider's (local, trusted but possibly buggy) info, or a peer's decoded one; throws
 * with the reason. `known`: the chunks the asker said it knows, whose table entries may be empty.
 */
function checkInfo(info: BlobInfo, known?: Uint8Array): void {
  const count = checkShape(info)
  const { table, have } = info
  if (table !== undefined) {
    // a node still downloading knows the hashes of the chunks it holds: '' stands for the others
    // (tested before the pattern: a long poll's answer names a few hashes in a table of '')
    for (let i = 0; i < count; i++) {
      const entry = table[i]
      const ok = typeof entry === 'string' && (entry === '' ? !have[i] || isSet(known, i) : SHA256_HEX_RE.test(entry))
      if (!ok) throw new Error('table entry is not 64 hex characters')
    }
  }
}

/** the size, chunk size, `have` and `table` (if any) of an info agree in length; returns the chunk count */
function checkShape({ size, chunkSize, have, table }: BlobInfo): number {
  if (!Number.isSafeInteger(size) || size < 0) throw new Error('bad size')
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) throw new Error('bad chunkSize')
  const count = chunkCount(size, chunkSize)
  if (count > MAX_CHUNKS) throw new Error(`too many chunks (${count} > ${MAX_CHUNKS})`)
  if (!Array.isArray(have) || have.length !== count) throw new Error(`have has ${have.length} entries, expected ${count}`)
  if (table !== undefined && (!Array.isArray(table) || table.length !== count)) throw new Error(`table has ${table.length} entries, expected ${count}`)
  return count
}

/**
 * An info answer; `known`: the chunks the asker knows. To such an asker the table goes as
 * `added`, the hashes of the chunks it holds that the asker does not know, so that the answer
 * does not grow with the blob (a table of empty entries still did, 3 bytes a chunk).
 *
 * What it writes is checked as it goes (a provider's bug throws here, it does not reach the
 * peer): only the hashes it names, so that a long poll's answer costs what it says, not the
 * blob's whole table (walking every hash of a 10 GiB layer took milliseconds per answer).
 */
export function encodeInfo(info: BlobInfo, known?: Uint8Array): string {
  const { table, have } = info
  let added: [number, string][] | undefined
  if (table !== undefined && known !== undefined) {
    const count = checkShape(info)
    added = []
    for (let i = 0; i < count; i++) {
      if (!have[i] || isSet(known, i)) continue
      const hash = table[i]
      if (typeof hash !== 'string' || !SHA256_HEX_RE.test(hash)) throw new Error('table entry is not 64 hex characters')
      added.push([i, hash])
    }
  } else checkInfo(info)
  const wire: InfoWire = { size: info.size, chunkSize: info.chunkSize, have: bitfield(have).toString('base64') }
  if (added !== undefined) wire.added = added
  else if (table !== undefined) wire.table = table
  if (info.received !== undefined) wire.received = info.received
  if (info.peers !== undefined && info.peers.length > 0) wire.peers = info.peers.slice(0, MAX_EXCHANGED_PEERS)
  if (info.near !== undefined && info.near.length > 0) wire.near = info.near.slice(0, MAX_NEAR_PEERS)
  return JSON.stringify(wire)
}

/**
 * Parses and validates an info body from a peer (untrusted), asked with `known`; throws with
 * the reason. An `added` list becomes a table with empty entries for the chunks known.
 */
export function decodeInfo(text: string, known?: Uint8Array): BlobInfo {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new Error('info is not JSON', { cause: err })
  }
  if (!isRecord(value)) throw new Error('info is not an object')
  const { size, chunkSize, table, added, have, received, peers, near } = value
  if (peers !== undefined && !isPeerIdList(peers, MAX_EXCHANGED_PEERS)) throw new Error('info: bad peers')
  if (near !== undefined && !isPeerIdList(near, MAX_NEAR_PEERS)) throw new Error('info: bad near')
  if (received !== undefined && (typeof received !== 'number' || !Number.isSafeInteger(received) || received < 0)) throw new Error('info: bad received')
  if (typeof size !== 'number' || typeof chunkSize !== 'number') throw new Error('info: size and chunkSize must be numbers')
  if (typeof have !== 'string' || !BASE64_RE.test(have)) throw new Error('info: have must be base64')
  if (table !== undefined && !Array.isArray(table)) throw new Error('info: table must be an array')
  if (!Number.isSafeInteger(size) || size < 0 || !Number.isSafeInteger(chunkSize) || chunkSize < 1) throw new Error('info: bad size or chunkSize')
  const count = chunkCount(size, chunkSize)
  if (count > MAX_CHUNKS) throw new Error('info: too many chunks')
  const bits = Buffer.from(have, 'base64')
  if (bits.length !== Math.ceil(count / 8)) throw new Error('info: bitfield length does not match the chunk count')
  const held = flags(bits, count)
  const info: BlobInfo = { size, chunkSize, have: held }
  if (table !== undefined) info.table = table as string[]
  else if (added !== undefined) info.table = fromAdded(added, count)
  if (received !== undefined) info.received = received
  if (peers !== undefined) info.peers = peers
  if (near !== undefined) info.near = near
  checkInfo(info, known)
  return info
}

/** the table an `added` list stands for ('' where it names no hash); throws unless it is [index, string] pairs by rising index below `count` */
function fromAdded(added: unknown, count: number): string[] {
  if (!Array.isArray(added) || added.length > count) throw new Error('info: added must be a list of at most one entry per chunk')
  const table = new Array<string>(count).fill('')
  let last = -1
  for (const entry of added) {
    if (!Array.isArray(entry) || entry.length !== 2) throw new Error('info: an added entry is not [index, hash]')
    const [index, hash] = entry as unknown[]
    if (typeof index !== 'number' || !Number.isInteger(index) || index <= last || index >= count) throw new Error('info: added indexes must rise and stay below the chunk count')
    if (typeof hash !== 'string') throw new Error('info: an added hash is not a string')
    table[index] = hash
    last = index
  }
  return table
}

function isPeerIdList(value: unknown, max: number): value is string[] {
  return Array.isArray(value) && value.length <= max && value.every((id) => typeof id === 'string' && PEER_ID_RE.test(id))
}

function parseJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch (err) {
    throw new Error('not JSON', { cause: err })
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}
