/**
 * What one holdings long poll costs, by the blob's chunk count: the asker's request (its `known`
 * bitfield in the path), the server's parse of it and its answer (`ChunkState.info` and
 * `encodeInfo`, as `src/peer/server.ts` answers), and the asker's decoding and merging of the
 * answer (`decodeInfo`, `mergeHoldings`), in the steady state of a fan-out: the server holds two
 * chunks in three, and the asker knows all of them but the last two (an answer names two new
 * chunks). A node gets about one such answer per source and chunk that source gains, so a cost
 * that grows with the chunk count makes a blob's holdings grow with its square.
 *
 * The baseline, measured in the same run: hashing one chunk (sha256 of `--chunk-size` bytes),
 * which every chunk received costs anyway. CPU time of this process (process.cpuUsage), median
 * of `--runs`.
 *
 *   scripts/bench/holdings [--chunks 43,1024,10240,32768] [--chunk-size 1MiB] [--runs 5]
 */
import { createHash, randomBytes } from 'node:crypto'
import { parseArgs } from 'node:util'
import { bitfield, blobPath, decodeInfo, encodeInfo, parsePath } from '../../src/peer/protocol.js'
import { mergeHoldings } from '../../src/swarm/peer-source.js'
import { ChunkState } from '../../src/transfer/chunks/state.js'
import { planChunks } from '../../src/transfer/chunks/plan.js'
import { formatRatio, median, parseSizeArg, printTable } from './lib/measure.js'

const { values } = parseArgs({
  options: {
    chunks: { type: 'string', default: '43,1024,10240,32768' },
    'chunk-size': { type: 'string', default: String(1024 * 1024) },
    runs: { type: 'string', default: '5' },
  },
})
const COUNTS = values.chunks.split(',').map(Number)
const CHUNK_SIZE = parseSizeArg(values['chunk-size'])
const RUNS = Number(values.runs)
const DIGEST = `sha256:${'ab'.repeat(32)}`

/** CPU ms per call of `fn`, median of RUNS timings of `calls` calls each (after a warm-up) */
function cpuMsPerCall(calls: number, fn: () => void): number {
  for (let i = 0; i < Math.max(5, calls / 5); i++) fn()
  const runs: number[] = []
  for (let r = 0; r < RUNS; r++) {
    const start = process.cpuUsage()
    for (let i = 0; i < calls; i++) fn()
    const used = process.cpuUsage(start)
    runs.push((used.user + used.system) / 1000 / calls)
  }
  return median(runs)
}

/** the server's state and an asker's view of it, as in the steady state described above */
function steadyState(count: number): { server: ChunkState; askerHave: boolean[]; askerTable: (string | undefined)[]; held: number } {
  const server = new ChunkState(planChunks(count * CHUNK_SIZE, CHUNK_SIZE))
  for (let i = 0; i < count; i++) if (i % 3 !== 2) server.mark(i, createHash('sha256').update(`${i}`).digest('hex'))
  const held = server.have.filter(Boolean).length
  let skipped = 0
  const askerHave = [...server.have]
  for (let i = count - 1; i >= 0 && skipped < 2; i--) {
    if (!askerHave[i]) continue
    askerHave[i] = false
    skipped++
  }
  const askerTable = askerHave.map((h, i) => (h ? server.hashes[i] : undefined))
  return { server, askerHave, askerTable, held: held - skipped }
}

const chunk = randomBytes(CHUNK_SIZE)
const hashMs = cpuMsPerCall(200, () => createHash('sha256').update(chunk).digest())
const rows: string[][] = [['chunks', 'ask (asker)', 'parse (server)', 'answer (server)', 'take (asker)', 'all, ms', 'all ÷ chunk sha256']]
const results: Record<string, number>[] = []
for (const count of COUNTS) {
  const { server, askerHave, askerTable, held } = steadyState(count)
  const calls = Math.max(20, Math.floor(400_000 / count))
  const known = bitfield(askerHave)
  const path = blobPath(DIGEST, { held, known })
  const parsed = parsePath(path)
  if (parsed?.kind !== 'info' || parsed.known === undefined) throw new Error(`the path of ${count} chunks does not parse`)
  const body = encodeInfo(server.info(), parsed.known)
  const taken = mergeHoldings([...askerHave], [...askerTable], decodeInfo(body, known))
  if (taken !== 2) throw new Error(`an answer named ${taken} new chunks, expected 2`)
  const ask = cpuMsPerCall(calls, () => blobPath(DIGEST, { held, known: bitfield(askerHave) }))
  const parse = cpuMsPerCall(calls, () => parsePath(path))
  const answer = cpuMsPerCall(calls, () => encodeInfo(server.info(), known))
  // (merging into the same arrays: after the first call nothing is new, the walk is the same)
  const take = cpuMsPerCall(calls, () => mergeHoldings(askerHave, askerTable, decodeInfo(body, known)))
  const all = ask + parse + answer + take
  results.push({ chunks: count, askMs: ask, parseMs: parse, answerMs: answer, takeMs: take, allMs: all, overChunkHash: all / hashMs })
  rows.push([count.toLocaleString('en'), ms(ask), ms(parse), ms(answer), ms(take), ms(all), formatRatio(all / hashMs)])
}
printTable(`one holdings long poll, CPU ms (sha256 of a ${CHUNK_SIZE / 1024 ** 2} MiB chunk: ${ms(hashMs)} ms), median of ${RUNS}`, rows)
console.log(JSON.stringify({ bench: 'holdings', node: process.version, chunkSize: CHUNK_SIZE, chunkHashMs: hashMs, results }))

function ms(value: number): string {
  return value < 0.1 ? value.toFixed(4) : value.toFixed(3)
}
