/** Small helpers for short request/response exchanges over libp2p 3.x streams. */
import type { Libp2p } from 'libp2p'

export type Libp2pStreamHandler = Parameters<Libp2p['handle']>[1]
export type Libp2pStream = Parameters<Libp2pStreamHandler>[0]
export type Libp2pConnection = Parameters<Libp2pStreamHandler>[1]

export class MessageTooLargeError extends Error {
  readonly code = 'ERR_MESSAGE_TOO_LARGE'
  constructor(max: number) {
    super(`message larger than ${max} bytes`)
    this.name = 'MessageTooLargeError'
  }
}

/**
 * Reads a stream to its end (the remote closed its write side), at most `max` bytes. Start it
 * before awaiting anything else in a handler: a handler that does not read at once can lose the
 * stream. Aborting `signal` aborts the stream.
 */
export async function readMessage(stream: Libp2pStream, max: number, signal: AbortSignal): Promise<Uint8Array> {
  const onAbort = (): void => stream.abort(signal.reason instanceof Error ? signal.reason : new Error('aborted'))
  if (signal.aborted) onAbort()
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    const parts: Uint8Array[] = []
    let total = 0
    for await (const chunk of stream) {
      const bytes = chunk.subarray()
      total += bytes.length
      if (total > max) throw new MessageTooLargeError(max)
      parts.push(bytes)
    }
    signal.throwIfAborted()
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts)
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}

/** writes one message and closes the write side */
export async function writeMessage(stream: Libp2pStream, bytes: Uint8Array, signal: AbortSignal): Promise<void> {
  if (!stream.send(bytes)) await stream.onDrain({ signal })
  await stream.close({ signal })
}

/** the remote host of a libp2p connection (ip4/ip6/dns value), or undefined */
export function connectionHost(connection: Libp2pConnection): string | undefined {
  const first = connection.remoteAddr.getComponents()[0]
  if (first === undefined || first.value === undefined) return undefined
  switch (first.name) {
    case 'ip4':
    case 'ip6':
    case 'dns':
    case 'dns4':
    case 'dns6':
      return first.value
    default:
      return undefined
  }
}
