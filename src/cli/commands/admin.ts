import { parseArgs } from 'node:util'
import { loadConfig } from '../../config/load.js'

/**
 * The commands that talk to a running daemon's admin API: pin, unpin, prefetch, gc, verify,
 * store ls. The daemon is found at --address, else at the `listen` of the configuration
 * (--config / SHOAL_CONFIG / SHOAL_LISTEN / built-in defaults).
 */
export const ADMIN_USAGE = `shoal pin IMAGE_REF [--platform OS/ARCH[/VARIANT]]    keep an image's blobs out of eviction
shoal unpin IMAGE_REF [--platform OS/ARCH[/VARIANT]]  let them go again
shoal prefetch IMAGE_REF [--platform OS/ARCH[/VARIANT]] pull an image into the store now
shoal gc                                             evict down to the low watermark now
shoal verify                                         re-hash every blob; drop those that do not match
shoal store ls [--json]                              list what the store holds
   common options: [--address http://127.0.0.1:5050] [--config FILE]
`

export class AdminCommandError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'AdminCommandError'
  }
}

interface Common {
  address: string
  json: boolean
  platform: string | undefined
  positionals: string[]
}

function parse(args: string[]): Common {
  const { values, positionals } = parseArgs({
    args,
    options: {
      address: { type: 'string' },
      config: { type: 'string' },
      platform: { type: 'string' },
      json: { type: 'boolean' },
    },
    strict: true,
    allowPositionals: true,
  })
  let address = values.address
  if (address === undefined) {
    const { host, port } = loadConfig({ file: values.config, env: process.env }).listen
    const reachable = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host
    address = `http://${reachable}:${port}`
  }
  if (!/^https?:\/\//.test(address)) address = `http://${address}`
  return { address: address.replace(/\/+$/, ''), json: values.json === true, platform: values.platform, positionals }
}

async function call(address: string, method: string, path: string, body?: unknown): Promise<Response> {
  let res: Response
  try {
    res = await fetch(`${address}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause
    throw new AdminCommandError(`cannot reach the shoal daemon at ${address} (${cause?.code ?? cause?.message ?? (err as Error).message}): is it running? (--address)`, { cause: err })
  }
  if (!res.ok) {
    const text = await res.text()
    let message = text
    try {
      message = (JSON.parse(text) as { errors: { message: string }[] }).errors[0]?.message ?? text
    } catch {
      // not an OCI error body
    }
    throw new AdminCommandError(`${method} ${path}: ${res.status} ${message}`)
  }
  return res
}

async function callJson<T>(address: string, method: string, path: string, body?: unknown): Promise<T> {
  return (await (await call(address, method, path, body)).json()) as T
}

function imageRef(c: Common, command: string): string {
  const ref = c.positionals[0]
  if (ref === undefined || c.positionals.length > 1) throw new AdminCommandError(`usage: shoal ${command} IMAGE_REF [--platform OS/ARCH]`)
  return ref
}

function out(text: string): void {
  process.stdout.write(text)
}

export async function adminCommand(command: string, args: string[]): Promise<void> {
  const c = parse(args)
  switch (command) {
    case 'pin': {
      const r = await callJson<{ ref: string; platform?: string; manifests: string[]; blobs: string[]; held: number }>(c.address, 'POST', '/api/v1/pins', {
        ref: imageRef(c, 'pin'),
        platform: c.platform,
      })
      if (c.json) return out(`${JSON.stringify(r)}\n`)
      return out(`pinned ${r.ref}${r.platform ? ` (${r.platform})` : ''}: ${r.manifests.length} manifests, ${r.blobs.length} blobs (${r.held} held now; shoal prefetch fetches the rest)\n`)
    }
    case 'unpin': {
      const ref = imageRef(c, 'unpin')
      const q = new URLSearchParams({ ref })
      if (c.platform !== undefined) q.set('platform', c.platform)
      const r = await callJson<{ removed: { ref: string; platform?: string }[] }>(c.address, 'DELETE', `/api/v1/pins?${q}`)
      if (c.json) return out(`${JSON.stringify(r)}\n`)
      if (r.removed.length === 0) throw new AdminCommandError(`${ref}${c.platform ? ` (${c.platform})` : ''} is not pinned`)
      return out(r.removed.map((p) => `unpinned ${p.ref}${p.platform ? ` (${p.platform})` : ''}\n`).join(''))
    }
    case 'prefetch':
      return prefetch(c)
    case 'gc': {
      const r = await callJson<{ evicted: number; freedBytes: number; usage: Usage }>(c.address, 'POST', '/api/v1/store/gc')
      if (c.json) return out(`${JSON.stringify(r)}\n`)
      return out(`evicted ${r.evicted} blobs, freed ${formatBytes(r.freedBytes)}; ${usageLine(r.usage)}\n`)
    }
    case 'verify': {
      const r = await callJson<{ checked: number; checkedBytes: number; bad: string[]; ms: number }>(c.address, 'POST', '/api/v1/store/verify')
      if (c.json) return out(`${JSON.stringify(r)}\n`)
      out(`verified ${r.checked} blobs (${formatBytes(r.checkedBytes)}) in ${(r.ms / 1000).toFixed(1)} s: ${r.bad.length} bad\n`)
      for (const d of r.bad) out(`  dropped ${d}\n`)
      if (r.bad.length > 0) process.exitCode = 1
      return
    }
    case 'store': {
      const sub = c.positionals[0]
      if (sub !== 'ls') throw new AdminCommandError('usage: shoal store ls [--json]')
      return storeLs(c)
    }
    default:
      throw new AdminCommandError(`unknown command ${command}`)
  }
}

interface Usage {
  bytes: number
  blobs: number
  partials: number
  partialBytes: number
  quotaBytes: number | null
  pinnedBlobs: number
}

interface BlobRow {
  digest: string
  size: number
  lastAccess: number
  pinned: boolean
  inUse: boolean
}

async function storeLs(c: Common): Promise<void> {
  const [list, store] = await Promise.all([
    callJson<{ blobs: BlobRow[]; partials: { digest: string; size: number; written: number; updatedAt: number }[] }>(c.address, 'GET', '/api/v1/store/blobs'),
    callJson<{ usage: Usage }>(c.address, 'GET', '/api/v1/store'),
  ])
  if (c.json) return out(`${JSON.stringify({ ...list, usage: store.usage })}\n`)
  const rows = [...list.blobs].sort((a, b) => b.lastAccess - a.lastAccess)
  const now = Date.now()
  out(`${'DIGEST'.padEnd(71)}  ${'SIZE'.padStart(9)}  ${'LAST ACCESS'.padStart(11)}  PINNED\n`)
  for (const b of rows) {
    out(`${b.digest.padEnd(71)}  ${formatBytes(b.size).padStart(9)}  ${formatAge(now - b.lastAccess).padStart(11)}  ${b.pinned ? 'yes' : '-'}${b.inUse ? ' (in use)' : ''}\n`)
  }
  for (const p of list.partials) {
    out(`${p.digest.padEnd(71)}  ${formatBytes(p.size).padStart(9)}  ${formatAge(now - p.updatedAt).padStart(11)}  partial ${Math.floor((100 * p.written) / Math.max(p.size, 1))}%\n`)
  }
  out(`${usageLine(store.usage)}\n`)
}

async function prefetch(c: Common): Promise<void> {
  const res = await call(c.address, 'POST', '/api/v1/prefetch', { ref: imageRef(c, 'prefetch'), platform: c.platform })
  const tty = process.stdout.isTTY === true && !c.json
  let buffered = ''
  let failed: string | undefined
  const decoder = new TextDecoder()
  for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
    buffered += decoder.decode(chunk, { stream: true })
    let nl = buffered.indexOf('\n')
    while (nl !== -1) {
      const text = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      nl = buffered.indexOf('\n')
      if (text === '') continue
      const e = JSON.parse(text) as Record<string, unknown>
      if (c.json) {
        out(`${text}\n`)
      } else if (e.event === 'resolved') {
        out(`${e.ref} (${e.digest}): ${e.manifests} manifests, ${e.blobs} blobs, ${formatBytes(e.bytes as number)}\n`)
      } else if (e.event === 'progress' && tty) {
        out(`\r[${e.n}/${e.of}] ${short(e.digest as string)} ${formatBytes(e.bytes as number)} / ${formatBytes(e.size as number)}`)
      } else if (e.event === 'blob') {
        const how = e.source === 'cache' ? 'already held' : e.cached ? `fetched from ${e.source}` : `fetched from ${e.source}, NOT cached (store full)`
        out(`${tty ? '\r\x1b[K' : ''}[${e.n}/${e.of}] ${short(e.digest as string)} ${formatBytes(e.size as number).padStart(9)}  ${how}\n`)
      } else if (e.event === 'done') {
        out(`done: ${e.cached}/${e.blobs} blobs held, ${formatBytes(e.fetchedBytes as number)} fetched in ${((e.ms as number) / 1000).toFixed(1)} s\n`)
      } else if (e.event === 'error') {
        failed = `${e.digest}: ${e.message}`
      }
    }
  }
  if (failed !== undefined) throw new AdminCommandError(`prefetch failed at ${failed}`)
}

function usageLine(u: Usage): string {
  const quota = u.quotaBytes === null ? 'no quota' : `${formatBytes(u.quotaBytes)} quota, ${((100 * (u.bytes + u.partialBytes)) / u.quotaBytes).toFixed(1)}% used`
  return `${u.blobs} blobs, ${formatBytes(u.bytes)} (${u.pinnedBlobs} pinned), ${u.partials} partial (${formatBytes(u.partialBytes)} reserved); ${quota}`
}

function short(digest: string): string {
  return digest.slice(0, 19)
}

export function formatBytes(n: number): string {
  if (n < 0) return '?'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`
}

function formatAge(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000))
  if (s < 60) return `${s}s ago`
  if (s < 3600) return `${Math.round(s / 60)}m ago`
  if (s < 86400) return `${Math.round(s / 3600)}h ago`
  return `${Math.round(s / 86400)}d ago`
}
