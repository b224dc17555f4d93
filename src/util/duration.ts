const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/

/** Parses `250ms`, `30s`, `5m`, `1h`, or a bare number of seconds, into milliseconds. */
export function parseDuration(value: unknown): number | undefined {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value * 1000
  if (typeof value !== 'string') return undefined
  const trimmed = value.trim()
  if (/^\d+(?:\.\d+)?$/.test(trimmed)) return Number(trimmed) * 1000
  const m = DURATION_RE.exec(trimmed)
  if (m === null) return undefined
  return Number(m[1]) * (UNITS[m[2] as string] as number)
}

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4,
}

/** Parses `512MiB`, `10GB`, `1048576` into bytes. */
export function parseSize(value: unknown): number | undefined {
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0) return value
  if (typeof value !== 'string') return undefined
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(value.trim())
  if (m === null) return undefined
  const unit = SIZE_UNITS[(m[2] as string).toLowerCase()]
  if (unit === undefined) return undefined
  return Math.floor(Number(m[1]) * unit)
}
