/**
 * Side-effect module: polyfills the runtime features that libp2p 3.x and its
 * transitive dependencies use but Node 20 lacks.
 *
 * `Promise.withResolvers` (ES2024, Node 22+) is called by libp2p, yamux and
 * @libp2p/utils at connection time. Without it a Node 20 node starts and
 * listens, then its first connection fails with
 * `EncryptionFailedError: Promise.withResolvers is not a function`.
 *
 * Import it first, before anything that imports libp2p:
 * `import './polyfill.js'`. It is idempotent and a no-op on Node 22+.
 */

interface PromiseResolvers<T> {
  promise: Promise<T>
  resolve: (value: T | PromiseLike<T>) => void
  reject: (reason?: unknown) => void
}

type PromiseWithResolvers = <T>() => PromiseResolvers<T>

const PromiseCtor = Promise as unknown as PromiseConstructor & { withResolvers?: PromiseWithResolvers }

if (typeof PromiseCtor.withResolvers !== 'function') {
  Object.defineProperty(PromiseCtor, 'withResolvers', {
    configurable: true,
    writable: true,
    enumerable: false,
    value: function withResolvers<T>(this: PromiseConstructor): PromiseResolvers<T> {
      let resolve!: (value: T | PromiseLike<T>) => void
      let reject!: (reason?: unknown) => void
      // honour subclasses, as the spec does (`this` is the constructor)
      const Ctor = typeof this === 'function' ? this : Promise
      const promise = new Ctor<T>((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    }
  })
}

export {}
