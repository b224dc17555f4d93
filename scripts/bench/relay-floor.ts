/**
 * A floor for the fan-out bench on this machine: what its fleet costs when each node does only
 * what any peer-to-peer mirror must, in lean Node.js, and nothing else (no discovery, no requests,
 * no chunk tables, no encryption).
 *
 * The same namespaces and tbf caps as scripts/bench/fanout (N nodes and an origin on a bridge).
 * The origin serves one blob of F random bytes. The nodes form a chain, origin → n01 → n02 → … →
 * nN: each node's relay takes the blob from the one before it and, as the bytes come, hashes
 * them, writes them to a file and passes them on to the next node and to the client on its own
 * node, which reads it over loopback and hashes it too. Every node receives F over its capped
 * downlink and sends F over its capped uplink, as in a fan-out, and origin sends F once. With
 * equal links a chain is the fastest schedule there is (cut-through: no chunk waits out a hop),
 * so its times are what a swarm of Node.js daemons could at best reach here, and its CPU per GB
 * what moving the fleet's bytes through these links costs a lean Node.js process.
 *
 *   scripts/bench/relay-floor [--nodes 16] [--size 128MiB] [--rate-mbit 50] [--rounds 3] [--batch-ms 0] [--stripes 1]
 *                             [--tls] [--hashes 1] [--json FILE]
 *
 * `--batch-ms M`: a relay stops reading for M ms after each read, so that the kernel gathers
 * the bytes in between (fewer, larger reads).
 * `--stripes K`: the blob is cut in K stripes, each down a chain of its own that starts at
 * another node, so that each node takes K flows in and sends K out, each at 1/K of its link, as
 * a swarm's many requests at once do.
 * `--tls`: node-to-node hops go over TLS 1.2 with a pre-shared key and Shoal's data-plane cipher
 * (PSK-AES128-GCM-SHA256, both ends: src/peer/protocol.ts), each on a port of its own; origin and
 * the local client stay in plaintext, as Shoal's do. `--hashes 2`: each relay hashes every byte
 * twice, as a Shoal node does (the chunk's hash and the blob's digest). Together they are the
 * floor of a mirror that encrypts and verifies what it passes on.
 *
 * Prints per round p50 and max completion over T_min (the fan-out bench's formula), the machine's
 * busy share, and the CPU seconds per GB delivered of the relays, the clients and the whole
 * machine. Everything is torn down at the end, also on failure.
 */
import { createHash, constants as cryptoConstants, randomBytes } from 'node:crypto'
import { createWriteStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, get, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import type { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { connect as tlsConnect } from 'node:tls'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { PSK_CIPHERS, TLS_VERSION } from '../../src/peer/protocol.js'
import { percentile, tMinSeconds } from './lib/fleet-report.js'
import { machineCpuTimes, median, parseSizeArg, processCpuTimes, round } from './lib/measure.js'
import { Fleet } from './lib/netns.js'

const PORT = 7000
/** node-to-node hops with `--tls` */
const TLS_PORT = 7001
/** the key every relay shares with `--tls` (a bench: only the cost of the cipher matters) */
const PSK = Buffer.alloc(16, 7)
const TLS_OPTIONS = { ciphers: PSK_CIPHERS, minVersion: TLS_VERSION, maxVersion: TLS_VERSION } as const
const START_LEAD_MS = 1500

/** what a relay does for one stripe of the blob */
interface StripeJob {
  /** the path it serves the stripe under, and asks its upstream for */
  path: string
  /** `http://addr:port` (or `https:` with `--tls`): the previous node in this stripe's chain, or origin */
  upstream: string
  /** the requests it waits for before it passes bytes on: the next node's (if any) and its client's */
  subscribers: number
  size: number
  digest: string
  file: string
}

// ------------------------------------------------------------ roles (run inside a namespace)

/** the origin: one blob of random bytes, from memory, its stripe j under /blob/j */
function origin(listen: string, size: number, stripes: number): void {
  const blob = randomBytes(size)
  const bounds = stripeBounds(size, stripes)
  const server = createServer((req, res) => {
    const j = Number(/^\/blob\/(\d+)$/.exec(req.url ?? '')?.[1] ?? Number.NaN)
    const b = bounds[j]
    if (b === undefined) return void res.writeHead(404).end()
    res.writeHead(200, { 'content-length': b.end - b.start })
    res.end(blob.subarray(b.start, b.end))
  })
  const digests = bounds.map((b) => createHash('sha256').update(blob.subarray(b.start, b.end)).digest('hex'))
  server.listen(PORT, listen, () => say({ ready: true, digests }))
}

/** stripe j of `size` bytes cut in `stripes`: [start, end) */
function stripeBounds(size: number, stripes: number): { start: number; end: number }[] {
  const per = Math.ceil(size / stripes)
  return Array.from({ length: stripes }, (_, j) => ({ start: Math.min(size, j * per), end: Math.min(size, (j + 1) * per) }))
}

/**
 * A relay, for each stripe: at `at` it asks the stripe's upstream for it; once its subscribers'
 * requests have come in (the next node's and the local client's), it streams the bytes to each
 * of them and to a file while it hashes them, at the pace of the slowest. It reads upstream
 * sockets the cheapest way Node has (`onread`: into one buffer, no stream per read) and, with
 * `batchMs`, stops reading one for that long after each read so that the kernel gathers the
 * bytes in between.
 */
function relay(jobs: StripeJob[], at: number, batchMs: number, hashes: number, tls: boolean): void {
  const byPath = new Map(jobs.map((job) => [job.path, relayStripe(job, batchMs, hashes)]))
  const serve = (req: IncomingMessage, res: ServerResponse): void => {
    const stripe = byPath.get(req.url ?? '')
    if (stripe === undefined) return void res.writeHead(404).end()
    stripe.subscribe(res)
  }
  // every address of the namespace: the next nodes', and loopback for the client (with `--tls`,
  // the next nodes come to a port of their own)
  const servers = [createServer(serve)]
  if (tls) servers.push(createHttpsServer({ ...TLS_OPTIONS, secureOptions: cryptoConstants.SSL_OP_NO_TICKET, pskCallback: () => PSK }, serve))
  let listening = 0
  for (const [i, server] of servers.entries()) {
    server.listen(i === 0 ? PORT : TLS_PORT, () => {
      if (++listening < servers.length) return
      say({ ready: true })
      setTimeout(() => {
        for (const stripe of byPath.values()) stripe.start()
      }, Math.max(0, at - Date.now()))
    })
  }
}

function relayStripe(job: StripeJob, batchMs: number, hashes: number): { subscribe(res: ServerResponse): void; start(): void } {
  const url = new URL(job.path, job.upstream)
  const outs: ServerResponse[] = []
  const hash = createHash('sha256')
  // the other hashes a node pays for (Shoal's chunk hash besides the blob's digest)
  const extra = Array.from({ length: hashes - 1 }, () => createHash('sha256'))
  const disk = createWriteStream(job.file)
  const into = Buffer.allocUnsafe(1 << 20)
  let head: string | undefined = '' // the upstream answer's head until its end is seen, then undefined
  let body = 0 // body bytes relayed
  let socket: Socket | undefined
  const full = new Set<Writable>() // sinks that asked to wait (until their 'drain')
  let held: Buffer | undefined // bytes read before every subscriber came
  let sinks: Writable[] = [] // every subscriber and the file, once all subscribers came
  const paused = (): boolean => full.size > 0 || outs.length < job.subscribers
  const resume = (): void => {
    if (paused()) return
    if (held !== undefined) forward(held)
    held = undefined
    if (!paused()) socket?.resume()
  }
  const forward = (piece: Buffer): void => {
    hash.update(piece)
    for (const h of extra) h.update(piece)
    body += piece.length
    for (const sink of sinks) {
      // one 'drain' per full sink: the bytes read before the pause took hold are written too
      if (!sink.write(piece) && !full.has(sink)) {
        full.add(sink)
        sink.once('drain', () => {
          full.delete(sink)
          resume()
        })
      }
    }
    if (body === job.size) {
      for (const sink of sinks) sink.end()
      socket?.destroy()
      say({ relayed: true, ok: hash.digest('hex') === job.digest })
    }
  }
  const onRead = (n: number, buf: Uint8Array): boolean => {
    let piece = Buffer.from(buf.subarray(0, n)) // the sinks keep it until written: a copy
    if (head !== undefined) {
      const text = head + piece.toString('latin1')
      const end = text.indexOf('\r\n\r\n')
      if (end < 0) {
        head = text
        return true
      }
      piece = piece.subarray(end + 4 - head.length)
      head = undefined
    }
    if (piece.length === 0) return true
    if (outs.length < job.subscribers) held = held === undefined ? piece : Buffer.concat([held, piece])
    else forward(piece)
    if (paused() || batchMs === 0) return !paused()
    setTimeout(resume, batchMs)
    return false
  }
  return {
    subscribe(res) {
      res.writeHead(200, { 'content-length': job.size })
      outs.push(res)
      if (outs.length === job.subscribers) sinks = [...outs, disk]
      resume()
    },
    start() {
      const onread = { buffer: into, callback: onRead }
      const ask = (): void => void socket?.write(`GET ${url.pathname} HTTP/1.1\r\nhost: ${url.host}\r\nconnection: close\r\n\r\n`)
      const at = { host: url.hostname, port: Number(url.port) }
      socket =
        url.protocol === 'https:'
          ? tlsConnect(
              // (tls.connect hands `onread` to its socket; @types/node leaves it out of ConnectionOptions)
              { ...at, ...({ onread } as object), ...TLS_OPTIONS, servername: '', checkServerIdentity: () => undefined, pskCallback: () => ({ psk: PSK, identity: 'relay' }) },
              ask,
            )
          : connect({ ...at, onread }, ask)
    },
  }
}

/** the node's client: at `at`, every stripe from its own relay over loopback at once, each hashed as it comes */
function client(stripes: { url: string; size: number; digest: string }[], at: number): void {
  setInterval(() => undefined, 60_000) // alive until the bench has read its CPU time, then killed
  let left = stripes.length
  let ok = true
  setTimeout(
    () => {
      for (const stripe of stripes) {
        get(stripe.url, (res) => {
          const hash = createHash('sha256')
          let bytes = 0
          res.on('data', (piece: Buffer) => {
            hash.update(piece)
            bytes += piece.length
          })
          res.on('end', () => {
            ok &&= bytes === stripe.size && hash.digest('hex') === stripe.digest
            if (--left === 0) say({ done: true, seconds: (Date.now() - at) / 1000, ok })
          })
        })
      }
    },
    Math.max(0, at - Date.now()),
  )
}

function say(message: object): void {
  process.stdout.write(`${JSON.stringify(message)}\n`)
}

// ------------------------------------------------------------ the bench

interface Options {
  nodes: number
  size: number
  rateMbit: number
  rounds: number
  batchMs: number
  stripes: number
  hashes: number
  tls: boolean
  json: string | undefined
}

/** the JSON lines a child writes, as they come */
function lines(child: { stdout: NodeJS.ReadableStream | null }, onLine: (msg: Record<string, unknown>) => void): void {
  if (child.stdout !== null) createInterface({ input: child.stdout }).on('line', (line) => onLine(JSON.parse(line) as Record<string, unknown>))
}

async function bench(o: Options): Promise<void> {
  const self = fileURLToPath(import.meta.url)
  const names = Array.from({ length: o.nodes }, (_, i) => `n${String(i + 1).padStart(2, '0')}`)
  const fleet = await Fleet.create({
    prefix: 'sbr',
    hosts: [{ name: 'origin', uploadMbit: o.rateMbit, downloadMbit: o.rateMbit }, ...names.map((name) => ({ name, uploadMbit: o.rateMbit, downloadMbit: o.rateMbit }))],
  })
  const work = mkdtempSync(join(tmpdir(), 'shoal-relay-floor-'))
  const node = (ns: string, args: string[], onLine: (msg: Record<string, unknown>) => void) => {
    const child = fleet.spawn(ns, process.execPath, [self, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
    lines(child, onLine)
    return child
  }
  const tMin = tMinSeconds({ nodes: o.nodes, imageBytes: o.size, originUpMbit: o.rateMbit, nodeDownMbit: o.rateMbit, nodeUpMbit: o.rateMbit })
  const rows: Record<string, number>[] = []
  try {
    const originHost = fleet.host('origin')
    const digests = await new Promise<string[]>((resolve) => {
      node(originHost.ns, ['origin', originHost.addr, String(o.size), String(o.stripes)], (m) => resolve(m['digests'] as string[]))
    })
    const bounds = stripeBounds(o.size, o.stripes)
    process.stderr.write(
      `relay floor: ${o.nodes} nodes, ${o.stripes} chain(s) at ${o.rateMbit} Mbit/s, a ${o.size}-byte blob, ${o.tls ? 'TLS between nodes' : 'plaintext'}, ${o.hashes} sha256 pass(es) per relay, T_min = ${tMin.toFixed(2)} s\n`,
    )
    for (let r = 1; r <= o.rounds; r++) {
      const at = Date.now() + START_LEAD_MS + 500 * o.nodes
      let ready = 0
      const results: { seconds: number; ok: boolean }[] = []
      let relaysOk = 0
      let allDone: () => void = () => undefined
      const done = new Promise<void>((resolve) => {
        allDone = resolve
      })
      // stripe j's chain: origin, then the nodes from n(j·N/k + 1) on, round the ring
      const shift = (j: number): number => Math.floor((j * names.length) / o.stripes)
      const relays = names.map((name, i) => {
        const jobs: StripeJob[] = bounds.map((b, j) => {
          const place = (i - shift(j) + names.length) % names.length
          const up = place === 0 ? originHost.addr : fleet.host(names[(i - 1 + names.length) % names.length]!).addr
          return {
            path: `/blob/${j}`,
            upstream: place > 0 && o.tls ? `https://${up}:${TLS_PORT}` : `http://${up}:${PORT}`,
            subscribers: place === names.length - 1 ? 1 : 2,
            size: b.end - b.start,
            digest: digests[j]!,
            file: join(work, `${name}-${r}-${j}`),
          }
        })
        return node(fleet.host(name).ns, ['relay', JSON.stringify(jobs), String(at), String(o.batchMs), String(o.hashes), String(o.tls)], (m) => {
          if (m['ready'] === true) ready++
          if (m['relayed'] === true && m['ok'] === true) relaysOk++
        })
      })
      while (ready < names.length && Date.now() < at - 200) await sleep(20)
      if (ready < names.length) throw new Error(`only ${ready} of ${names.length} relays listened before the start`)
      const stripes = bounds.map((b, j) => ({ url: `http://127.0.0.1:${PORT}/blob/${j}`, size: b.end - b.start, digest: digests[j]! }))
      const clients = names.map((name) =>
        node(fleet.host(name).ns, ['client', JSON.stringify(stripes), String(at)], (m) => {
          if (m['done'] === true) results.push({ seconds: Number(m['seconds']), ok: m['ok'] === true })
          if (results.length === names.length) allDone()
        }),
      )
      const pids = (children: typeof relays): number[] => children.flatMap((c) => (c.pid === undefined ? [] : [c.pid]))
      const cpu = (ps: number[]): { user: number; system: number } =>
        ps.reduce(
          (a, pid) => {
            const t = processCpuTimes(pid)
            return { user: a.user + (t?.user ?? 0), system: a.system + (t?.system ?? 0) }
          },
          { user: 0, system: 0 },
        )
      await sleep(Math.max(0, at - Date.now()))
      const m0 = machineCpuTimes()
      const [relay0, client0] = [cpu(pids(relays)), cpu(pids(clients))]
      // the round's deadline, called off when the round ends (a pending one kept the process
      // alive minutes after its last round, and would have failed a later round when it fired)
      const deadline = new AbortController()
      const timeout = sleep((tMin * 10 + 60) * 1000, undefined, { signal: deadline.signal }).then(() => {
        throw new Error(`round ${r} did not complete: ${results.length} of ${names.length} clients done`)
      })
      try {
        await Promise.race([done, timeout])
      } finally {
        deadline.abort()
        timeout.catch(() => undefined)
      }
      const [relay1, client1] = [cpu(pids(relays)), cpu(pids(clients))]
      const m1 = machineCpuTimes()
      await sleep(300) // the relays' last lines
      for (const c of [...relays, ...clients]) c.kill('SIGKILL')
      if (results.some((x) => !x.ok) || relaysOk < names.length * o.stripes) throw new Error(`round ${r}: a node received wrong bytes`)
      const secs = results.map((x) => x.seconds)
      const gb = (o.size * o.nodes) / 1e9
      const row = {
        p50OverTmin: percentile(secs, 0.5) / tMin,
        maxOverTmin: Math.max(...secs) / tMin,
        machineBusy: (m1.busy - m0.busy) / (m1.total - m0.total),
        machineCpuPerGB: (m1.busy - m0.busy) / gb,
        relayCpuPerGB: (relay1.user + relay1.system - relay0.user - relay0.system) / gb,
        relaySystemCpuPerGB: (relay1.system - relay0.system) / gb,
        clientCpuPerGB: (client1.user + client1.system - client0.user - client0.system) / gb,
      }
      rows.push(row)
      process.stdout.write(
        `round ${r}: p50 ${row.p50OverTmin.toFixed(3)}× T_min, max ${row.maxOverTmin.toFixed(3)}×, machine ${(row.machineBusy * 100).toFixed(0)}% busy, ` +
          `CPU s per GB delivered: relays ${row.relayCpuPerGB.toFixed(2)} (system ${row.relaySystemCpuPerGB.toFixed(2)}), clients ${row.clientCpuPerGB.toFixed(2)}, machine ${row.machineCpuPerGB.toFixed(2)}\n`,
      )
      for (const name of names) for (let j = 0; j < o.stripes; j++) rmSync(join(work, `${name}-${r}-${j}`), { force: true })
      await sleep(2000)
    }
    const med = Object.fromEntries(Object.keys(rows[0] ?? {}).map((k) => [k, round(median(rows.map((x) => x[k] ?? Number.NaN)), 3)]))
    process.stdout.write(`median of ${rows.length}: ${JSON.stringify(med)}\n`)
    if (o.json !== undefined) writeFileSync(o.json, `${JSON.stringify({ bench: 'relay-floor', params: o, tMinSeconds: tMin, rounds: rows, median: med })}\n`)
  } finally {
    await fleet.teardown()
    rmSync(work, { recursive: true, force: true })
  }
}

const [role, ...rest] = process.argv.slice(2)
if (role === 'origin') origin(rest[0]!, Number(rest[1]), Number(rest[2]))
else if (role === 'relay') relay(JSON.parse(rest[0]!) as StripeJob[], Number(rest[1]), Number(rest[2]), Number(rest[3]), rest[4] === 'true')
else if (role === 'client') client(JSON.parse(rest[0]!) as { url: string; size: number; digest: string }[], Number(rest[1]))
else {
  const { values } = parseArgs({
    options: {
      nodes: { type: 'string', default: '16' },
      size: { type: 'string', default: '128MiB' },
      'rate-mbit': { type: 'string', default: '50' },
      rounds: { type: 'string', default: '3' },
      'batch-ms': { type: 'string', default: '0' },
      stripes: { type: 'string', default: '1' },
      hashes: { type: 'string', default: '1' },
      tls: { type: 'boolean', default: false },
      json: { type: 'string' },
    },
  })
  await bench({ nodes: Number(values.nodes), size: parseSizeArg(values.size), rateMbit: Number(values['rate-mbit']), rounds: Number(values.rounds), batchMs: Number(values['batch-ms']),
    stripes: Number(values.stripes),
    hashes: Math.max(1, Number(values.hashes)),
    tls: values.tls,
    json: values.json,
  })
}
