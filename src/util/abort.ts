/** Waits for a shared promise without letting one waiter's abort reject it for the others. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason)
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (e) => {
        signal.removeEventListener('abort', onAbort)
        reject(e)
      },
    )
  })
}

/**
 * A signal that aborts when any of `signals` does, or after `ms` with a TimeoutError: what
 * `AbortSignal.any([...signals, AbortSignal.timeout(ms)])` means, written out because on this
 * Node version that composite never times out once a garbage collection ran (the timeout signal
 * is only weakly held; nodejs/node#57736): requests waited forever instead of timing out. The
 * timer here holds its controller strongly and is cleared as soon as the signal aborts.
 */
export function timeoutSignal(ms: number, ...signals: AbortSignal[]): AbortSignal {
  const controller = new AbortController()
  const timer = setTimeout(() => controller.abort(new DOMException(`timed out after ${ms} ms`, 'TimeoutError')), ms)
  timer.unref()
  const signal = signals.length === 0 ? controller.signal : AbortSignal.any([controller.signal, ...signals])
  if (signal.aborted) clearTimeout(timer)
  else signal.addEventListener('abort', () => clearTimeout(timer), { once: true })
  return signal
}
