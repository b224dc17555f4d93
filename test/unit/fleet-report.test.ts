import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import type { NodeResult, RoundResult } from '../../scripts/bench/lib/fleet-fanout.js'
import { fetcherSplit, rampSummary } from '../../scripts/bench/lib/fleet-report.js'

function node(name: string, seconds: number, originBlobBytes: number, extra: Partial<NodeResult> = {}): NodeResult {
  return { name, addr: name, client: 'light', ok: true, offsetMs: 0, seconds, startedAt: 0, bytes: 1, verified: true, originBlobBytes, directBlobBytes: 0, ...extra }
}

describe('fan-out report', () => {
  test('completion times split into origin fetchers (over 1 MB from origin) and the others', () => {
    const round = {
      nodes: [
        node('n1', 40, 12_000_000),
        node('n2', 44, 30_000_000),
        node('n3', 30, 504), // the config blob's fetcher is no fetcher of the layers
        node('n4', 34, 0),
        node('n5', 32, 0),
        node('n6', 99, 0, { killed: true }),
        node('n7', 99, 20_000_000, { ok: false }),
      ],
    } as unknown as RoundResult
    assert.equal(
      fetcherSplit(round, 20),
      'completion ÷ T_min: origin fetchers (over 1 MB from origin) 2, median 2.10× max 2.20×; the others 3, median 1.60× max 1.70×',
    )
  })

  test('a round with no fetcher says so', () => {
    const round = { nodes: [node('n1', 20, 0)] } as unknown as RoundResult
    assert.equal(fetcherSplit(round, 10), 'completion ÷ T_min: origin fetchers (over 1 MB from origin) 0; the others 1, median 2.00× max 2.00×')
  })

  test('a round against its mid-round rate: the middle half sets the rate, the ramp ends at 80% of it', () => {
    // 12 seconds: nothing for two, a ramp, 70 MB/s in the middle, a tail
    const received = [0, 0, 10, 40, 60, 70, 70, 70, 70, 70, 30, 5]
    // the middle half: seconds 3-8 (40, 60, 70, 70, 70, 70), 63.3 MB/s; 80% of it (50.7) first in second 4
    assert.equal(
      rampSummary(received),
      'the nodes received 495 MB, 63.3 MB/s over the middle half of the round (seconds 3–8), 80% of that first in second 4; at that rate the bytes take 7.8 s of the round\'s 12',
    )
    assert.match(rampSummary([1, 2]), /too few seconds/)
  })
})
