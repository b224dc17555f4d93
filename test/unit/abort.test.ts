import assert from 'node:assert/strict'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { timeoutSignal } from '../../src/util/abort.js'

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

test('timeoutSignal times out after a garbage collection (AbortSignal.any with AbortSignal.timeout does not on Node 20)', async () => {
  const n = 200
  let fired = 0
  const held: AbortSignal[] = []
  for (let i = 0; i < n; i++) {
    const signal = timeoutSignal(50, new AbortController().signal)
    signal.addEventListener('abort', () => {
      if ((signal.reason as Error).name === 'TimeoutError') fired++
    })
    held.push(signal)
  }
  for (let i = 0; i < 3; i++) {
    gc()
    await sleep(5)
  }
  await sleep(300)
  assert.equal(fired, n)
  assert.equal(held.length, n)
})

test('timeoutSignal follows its inputs', () => {
  const controller = new AbortController()
  const signal = timeoutSignal(60_000, controller.signal)
  controller.abort(new Error('stop'))
  assert.equal((signal.reason as Error).message, 'stop')
  const already = timeoutSignal(60_000, AbortSignal.abort(new Error('gone')))
  assert.equal(already.aborted, true)
})
