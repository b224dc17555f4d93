import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { contextSwitches, processCpuTimes } from '../../scripts/bench/lib/measure.js'

describe('bench process measures', () => {
  test('context switches: counted over the threads, and a wait adds some', async () => {
    const before = contextSwitches(process.pid)
    assert.ok(Number.isInteger(before) && before > 0, `got ${before}`)
    // a timer wait blocks the main thread in epoll: a voluntary switch at least
    await sleep(30)
    const after = processCpuTimes(process.pid)
    assert.ok(after !== undefined)
    assert.ok(after.switches > before, `${after.switches} after a wait, ${before} before`)
  })

  test('a process that is gone has no times', () => {
    assert.equal(processCpuTimes(2 ** 22 + 1), undefined)
  })
})
