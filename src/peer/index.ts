/**
 * The peer data plane: how chunk bytes travel between Shoal peers.
 *
 * A requester gets a ticket from the serving peer over a short libp2p stream (Noise
 * authenticates both peer ids), then fetches blob info and chunks over HTTP/1.1 on the peer's
 * separate data port: inside TLS 1.2 PSK keyed by the ticket (default), or in plaintext with the
 * ticket as a bearer token (trusted networks). Bulk bytes never go through yamux.
 */
export { createPeerDataClient, type PeerDataClient, type PeerDataClientOptions } from './client.js'
export * from './errors.js'
export { TICKET_PROTOCOL, chunkCount, chunkLength } from './protocol.js'
export { ThrottleStream, TokenBucket } from './rate-limit.js'
export { createPeerDataServer, type PeerDataServerOptions } from './server.js'
export { TicketBook } from './ticket.js'
export type { BlobInfo, ChunkProvider, ChunkRead, PeerDataClientStats, PeerDataServer, PeerDataServerStats } from './types.js'
