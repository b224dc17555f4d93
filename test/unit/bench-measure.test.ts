import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { contextSwitches, parseSizeArg, processCpuTimes } from '../../scripts/bench/lib/measure.js'

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

describe('bench size arguments', () => {
  test('binary units, with or without iB, and bare byte counts', () => {
    assert.equal(parseSizeArg('128MiB'), 128 * 1024 ** 2)
    assert.equal(parseSizeArg('24M'), 24 * 1024 ** 2)
    assert.equal(parseSizeArg('64kib'), 64 * 1024)
    assert.equal(parseSizeArg('1.5GB'), 1.5 * 1024 ** 3)
    assert.equal(parseSizeArg(' 1073741824 '), 1024 ** 3)
  })

  test('anything else is refused', () => {
    for (const bad of ['', '0', '12 apples', '-1M', '1PiB', 'MiB']) assert.throws(() => parseSizeArg(bad), /bad size/, bad)
  })
})
