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
 *   scripts/bench/relay-floor [--nodes 16] [--size 128MiB] [--rate-mbit 50] [--rounds 3] [--batch-ms 0] [--json FILE]
 *
 * `--batch-ms M`: a relay stops reading for M ms after each read, so that the kernel gathers
 * the bytes in between (fewer, larger reads).
 *
 * Prints per round p50 and max completion over T_min (the fan-out bench's formula), the machine's
 * busy share, and the CPU seconds per GB delivered of the relays, the clients and the whole
 * machine. Everything is torn down at the end, also on failure.
 */
import { createHash, randomBytes } from 'node:crypto'
import { createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, get, type ServerResponse } from 'node:http'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { parseBytes } from '../../src/config/load.js'
import { percentile, tMinSeconds } from './lib/fleet-report.js'
import { median, processCpuTimes, round } from './lib/measure.js'
import { Fleet } from './lib/netns.js'

const PORT = 7000
const PATH = '/blob'
const START_LEAD_MS = 1500

// ------------------------------------------------------------ roles (run inside a namespace)

/** the origin: one blob of random bytes, from memory */
function origin(listen: string, size: number): void {
  const blob = randomBytes(size)
  const server = createServer((req, res) => {
    if (req.url !== PATH) return void res.writeHead(404).end()
    res.writeHead(200, { 'content-length': size })
    res.end(blob)
  })
  server.listen(PORT, listen, () => say({ ready: true, digest: createHash('sha256').update(blob).digest('hex') }))
}

/**
 * A relay: at `at` it asks `upstream` for the blob; once `subscribers` requests for it have come
 * in (the next node's and the local client's), it streams the bytes to each of them and to a
 * file while it hashes them, at the pace of the slowest. It reads the upstream socket the
 * cheapest way Node has (`onread`: into one buffer, no stream per read) and, with `batchMs`,
 * stops reading for that long after each read so that the kernel gathers the bytes between.
 */
function relay(upstream: string, subscribers: number, at: number, file: string, size: number, batchMs: number, digest: string): void {
  const url = new URL(upstream)
  const outs: ServerResponse[] = []
  const hash = createHash('sha256')
  const disk = createWriteStream(file)
  const into = Buffer.allocUnsafe(1 << 20)
  let head: string | undefined = '' // the upstream answer's head until its end is seen, then undefined
  let body = 0 // body bytes relayed
  let socket: Socket | undefined
  let waiting = 0 // sinks that asked to wait
  let held: Buffer | undefined // bytes read before every subscriber came
  const paused = (): boolean => waiting > 0 || outs.length < subscribers
  const resume = (): void => {
    if (!paused()) {
      if (held !== undefined) forward(held)
      held = undefined
      if (!paused()) socket?.resume()
    }
  }
  const forward = (piece: Buffer): void => {
    hash.update(piece)
    body += piece.length
    for (const sink of [...outs, disk]) {
      if (!sink.write(piece)) {
        waiting++
        sink.once('drain', () => {
          waiting--
          resume()
        })
      }
    }
    if (body === size) {
      for (const sink of [...outs, disk]) sink.end()
      socket?.destroy()
      say({ relayed: true, ok: hash.digest('hex') === digest })
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
    if (outs.length < subscribers) held = held === undefined ? piece : Buffer.concat([held, piece])
    else forward(piece)
    if (paused() || batchMs === 0) return !paused()
    setTimeout(resume, batchMs)
    return false
  }
  const server = createServer((req, res) => {
    if (req.url !== PATH) return void res.writeHead(404).end()
    res.writeHead(200, { 'content-length': size })
    outs.push(res)
    resume()
  })
  // every address of the namespace: the next node's, and loopback for the client
  server.listen(PORT, () => {
    say({ ready: true })
    setTimeout(
      () => {
        socket = connect({ host: url.hostname, port: Number(url.port), onread: { buffer: into, callback: onRead } }, () => {
          socket?.write(`GET ${url.pathname} HTTP/1.1\r\nhost: ${url.host}\r\nconnection: close\r\n\r\n`)
        })
      },
      Math.max(0, at - Date.now()),
    )
  })
}

/** the node's client: at `at`, the blob from its own relay over loopback, hashed as it comes */
function client(url: string, at: number, digest: string): void {
  setInterval(() => undefined, 60_000) // alive until the bench has read its CPU time, then killed
  setTimeout(
    () =>
      get(url, (res) => {
        const hash = createHash('sha256')
        let bytes = 0
        res.on('data', (piece: Buffer) => {
          hash.update(piece)
          bytes += piece.length
        })
        res.on('end', () => say({ done: true, seconds: (Date.now() - at) / 1000, bytes, ok: hash.digest('hex') === digest }))
      }),
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
  json: string | undefined
}

/** the JSON lines a child writes, as they come */
function lines(child: { stdout: NodeJS.ReadableStream | null }, onLine: (msg: Record<string, unknown>) => void): void {
  let buffered = ''
  child.stdout?.setEncoding('utf8')
  child.stdout?.on('data', (text: string) => {
    buffered += text
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      onLine(JSON.parse(buffered.slice(0, nl)) as Record<string, unknown>)
      buffered = buffered.slice(nl + 1)
    }
  })
}

/** whole-machine busy and total CPU seconds, from /proc/stat */
function machineCpu(): { busy: number; total: number } {
  const f = (readFileSync('/proc/stat', 'latin1').split('\n')[0] ?? '').trim().split(/\s+/).slice(1, 9).map(Number)
  const total = f.reduce((a, b) => a + b, 0) / 100
  return { busy: total - ((f[3] ?? 0) + (f[4] ?? 0)) / 100, total }
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
    const digest = await new Promise<string>((resolve) => {
      node(originHost.ns, ['origin', originHost.addr, String(o.size)], (m) => resolve(String(m['digest'])))
    })
    process.stderr.write(`relay floor: ${o.nodes} nodes in a chain at ${o.rateMbit} Mbit/s, a ${o.size}-byte blob, T_min = ${tMin.toFixed(2)} s\n`)
    for (let r = 1; r <= o.rounds; r++) {
      const at = Date.now() + START_LEAD_MS + 500 * o.nodes
      let ready = 0
      const results: { seconds: number; ok: boolean }[] = []
      let relaysOk = 0
      let allDone: () => void = () => undefined
      const done = new Promise<void>((resolve) => {
        allDone = resolve
      })
      const relays = names.map((name, i) => {
        const host = fleet.host(name)
        const up = i === 0 ? originHost.addr : fleet.host(names[i - 1]!).addr
        const subscribers = i === names.length - 1 ? 1 : 2
        return node(host.ns, ['relay', `http://${up}:${PORT}${PATH}`, String(subscribers), String(at), join(work, `${name}-${r}`), String(o.size), String(o.batchMs), digest], (m) => {
          if (m['ready'] === true) ready++
          if (m['relayed'] === true && m['ok'] === true) relaysOk++
        })
      })
      while (ready < names.length && Date.now() < at - 200) await sleep(20)
      if (ready < names.length) throw new Error(`only ${ready} of ${names.length} relays listened before the start`)
      const clients = names.map((name) =>
        node(fleet.host(name).ns, ['client', `http://127.0.0.1:${PORT}${PATH}`, String(at), digest], (m) => {
          if (m['done'] === true) results.push({ seconds: Number(m['seconds']), ok: m['ok'] === true && m['bytes'] === o.size })
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
      const m0 = machineCpu()
      const [relay0, client0] = [cpu(pids(relays)), cpu(pids(clients))]
      const timeout = sleep((tMin * 10 + 60) * 1000).then(() => {
        throw new Error(`round ${r} did not complete: ${results.length} of ${names.length} clients done`)
      })
      await Promise.race([done, timeout])
      const [relay1, client1] = [cpu(pids(relays)), cpu(pids(clients))]
      const m1 = machineCpu()
      await sleep(300) // the relays' last lines
      for (const c of [...relays, ...clients]) c.kill('SIGKILL')
      if (results.some((x) => !x.ok) || relaysOk < names.length) throw new Error(`round ${r}: a node received wrong bytes`)
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
      for (const name of names) rmSync(join(work, `${name}-${r}`), { force: true })
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

function sizeArg(text: string): number {
  const n = parseBytes(text)
  if (n === undefined || n < 1) throw new Error(`bad size "${text}" (e.g. 128MiB)`)
  return n
}

const [role, ...rest] = process.argv.slice(2)
if (role === 'origin') origin(rest[0]!, Number(rest[1]))
else if (role === 'relay') relay(rest[0]!, Number(rest[1]), Number(rest[2]), rest[3]!, Number(rest[4]), Number(rest[5]), rest[6]!)
else if (role === 'client') client(rest[0]!, Number(rest[1]), rest[2]!)
else {
  const { values } = parseArgs({
    options: {
      nodes: { type: 'string', default: '16' },
      size: { type: 'string', default: '128MiB' },
      'rate-mbit': { type: 'string', default: '50' },
      rounds: { type: 'string', default: '3' },
      'batch-ms': { type: 'string', default: '0' },
      json: { type: 'string' },
    },
  })
  await bench({ nodes: Number(values.nodes), size: sizeArg(values.size), rateMbit: Number(values['rate-mbit']), rounds: Number(values.rounds), batchMs: Number(values['batch-ms']), json: values.json })
}
