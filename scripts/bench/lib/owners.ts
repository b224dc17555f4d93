/** Who owns a piece of profiled code: shared by the profile readers (profile-summary, perf-split). */

/** npm packages that are libp2p or come with it (its streams, muxer, encryption, DHT and their helpers) */
export const LIBP2P =
  /^(@libp2p|libp2p|@chainsafe|it-|uint8|multiformats|@multiformats|p-queue|interface-|datastore|@noble|race-signal|progress-events|any-signal|main-event|protons|mortice|abort-error)/

/** the npm package, Node module or Shoal module a script URL belongs to */
export function owner(url: string): string {
  if (url === '') return ''
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (pkg !== null) return pkg[1] as string
  if (url.startsWith('node:')) return url.replace(/^node:(internal\/)?/, 'node:').split('/').slice(0, 2).join('/')
  const own = /dist\/(src\/.*)\.js$/.exec(url)
  return own !== null ? `shoal:${own[1]}` : url
}
