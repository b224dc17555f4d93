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
