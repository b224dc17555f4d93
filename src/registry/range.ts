/** A satisfiable single byte range, inclusive. */
export interface ByteRange {
  start: number
  end: number
}

const RANGE_RE = /^bytes=(\d*)-(\d*)$/

/**
 * Interprets a Range header against a representation of `size` bytes (RFC 9110 §14).
 * - undefined: no usable range, answer 200 with the whole body (absent, malformed, other units,
 *   or several ranges, which a server may ignore);
 * - 'unsatisfiable': answer 416 with `Content-Range: bytes *\/size`;
 * - a range: answer 206.
 * `bytes=500-0` (last before first) is answered 416, as the OCI conformance suite expects.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | 'unsatisfiable' | undefined {
  if (header === undefined) return undefined
  const m = RANGE_RE.exec(header.trim())
  if (m === null) return undefined
  const first = m[1] as string
  const last = m[2] as string
  if (first === '' && last === '') return undefined
  if (first === '') {
    const suffix = Number(last)
    if (suffix === 0 || size === 0) return 'unsatisfiable'
    return { start: Math.max(0, size - suffix), end: size - 1 }
  }
  const start = Number(first)
  if (!Number.isSafeInteger(start)) return 'unsatisfiable'
  if (last !== '') {
    const end = Number(last)
    if (end < start) return 'unsatisfiable'
    if (start >= size) return 'unsatisfiable'
    return { start, end: Math.min(end, size - 1) }
  }
  if (start >= size) return 'unsatisfiable'
  return { start, end: size - 1 }
}
