// A TCP proxy that caps the bytes per second flowing from its upstream to its clients: makes a
// loopback origin slow enough for a test to act in the middle of a download.
import { connect, createServer, type Server, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

export interface ThrottleProxy {
  /** http://127.0.0.1:PORT */
  readonly url: string
  readonly port: number
  /** bytes per second, upstream → client; Infinity for no cap */
  rate: number
  close(): Promise<void>
}

const SLICE_BYTES = 16 * 1024
const MIN_SLEEP_MS = 4

export async function startThrottleProxy(upstreamPort: number, rate: number, host = '127.0.0.1'): Promise<ThrottleProxy> {
  const sockets = new Set<Socket>()
  const proxy: ThrottleProxy = { url: '', port: 0, rate, close: async () => {} }
  const server: Server = createServer((client) => {
    const up = connect(upstreamPort, host)
    sockets.add(client)
    sockets.add(up)
    const end = (): void => {
      client.destroy()
      up.destroy()
    }
    client.once('close', () => sockets.delete(client))
    up.once('close', () => sockets.delete(up))
    client.on('error', end)
    up.on('error', end)
    client.pipe(up)
    // upstream → client, in slices, sleeping to hold the rate
    void (async () => {
      const t0 = performance.now()
      let sent = 0
      try {
        for await (const chunk of up as AsyncIterable<Buffer>) {
          for (let at = 0; at < chunk.length; at += SLICE_BYTES) {
            const slice = chunk.subarray(at, at + SLICE_BYTES)
            if (client.destroyed) return
            if (!client.write(slice)) await new Promise((r) => client.once('drain', r))
            sent += slice.length
            // sleep only when ahead of schedule by a few ms (timers are no finer than 1 ms)
            const ahead = t0 + (sent / proxy.rate) * 1000 - performance.now()
            if (ahead > MIN_SLEEP_MS) await sleep(ahead)
          }
        }
        client.end()
      } catch {
        end()
      }
    })()
  })
  await new Promise<void>((resolve) => server.listen(0, host, resolve))
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  return Object.assign(proxy, {
    url: `http://${host}:${port}`,
    port,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  })
}
