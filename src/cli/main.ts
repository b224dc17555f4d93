#!/usr/bin/env node
import { parseArgs } from 'node:util'
import { loadConfig } from '../config/load.js'
import { ConfigError } from '../config/schema.js'
import { startDaemon } from '../daemon/daemon.js'
import { StoreLockedError } from '../store/errors.js'
import { ADMIN_USAGE, AdminCommandError, adminCommand } from './commands/admin.js'
import { VERSION } from '../version.js'

const USAGE = `Usage: shoal <command> [options]

Commands:
  daemon     run the node-local registry mirror
  version    print the version
  swarm-key  print a new pre-shared key for a private swarm (shoal swarm-key > /etc/shoal/swarm.key)
  pin, unpin, prefetch, gc, verify, store ls   manage a running daemon's store (below)

shoal daemon [--config FILE] [--listen HOST:PORT] [--data-dir DIR]
             [--upstream REGISTRY=URL]... [--default-registry REGISTRY] [--log-level LEVEL]
             [--store-max-bytes SIZE] [--store-max-percent PERCENT]
             [--p2p-listen MULTIADDR]... [--bootstrap MULTIADDR|dns:NAME:PORT]...
             [--swarm-key FILE] [--peer-listen HOST:PORT] [--no-p2p]

${ADMIN_USAGE}
Every option can also be set in the YAML config file or as SHOAL_* environment variables
(SHOAL_LISTEN, SHOAL_DATA_DIR, SHOAL_UPSTREAM, ...): flags win over the environment, the
environment over the file, the file over the built-in defaults (config/default.yaml).
`

/** Exit codes: 1 runtime failure, 2 bad usage or configuration. */
const EXIT_USAGE = 2

async function daemon(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string' },
      listen: { type: 'string' },
      'data-dir': { type: 'string' },
      upstream: { type: 'string', multiple: true },
      'default-registry': { type: 'string' },
      'log-level': { type: 'string' },
      'store-max-bytes': { type: 'string' },
      'store-max-percent': { type: 'string' },
      'p2p-listen': { type: 'string', multiple: true },
      bootstrap: { type: 'string', multiple: true },
      'swarm-key': { type: 'string' },
      'peer-listen': { type: 'string' },
      'no-p2p': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  })
  if (values.help) {
    process.stdout.write(USAGE)
    return
  }
  const config = loadConfig({
    file: values.config,
    env: process.env,
    flags: {
      listen: values.listen,
      dataDir: values['data-dir'],
      upstreams: values.upstream,
      defaultRegistry: values['default-registry'],
      logLevel: values['log-level'],
      'store.maxBytes': values['store-max-bytes'],
      'store.maxPercent': values['store-max-percent'],
      'p2p.listen': values['p2p-listen'],
      'p2p.bootstrap': values.bootstrap,
      'p2p.swarmKeyFile': values['swarm-key'],
      'p2p.peerListen': values['peer-listen'],
      'p2p.enabled': values['no-p2p'] ? 'false' : undefined,
    },
  })
  const d = await startDaemon(config)
  const stop = (signal: string): void => {
    d.logger.info({ signal }, 'stopping')
    const force = setTimeout(() => process.exit(1), 10_000)
    force.unref()
    d.stop().then(
      () => process.exit(0),
      (err) => {
        d.logger.error({ err }, 'stop failed')
        process.exit(1)
      },
    )
  }
  process.once('SIGTERM', () => stop('SIGTERM'))
  process.once('SIGINT', () => stop('SIGINT'))
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv
  switch (command) {
    case 'daemon':
      return daemon(rest)
    case 'pin':
    case 'unpin':
    case 'prefetch':
    case 'gc':
    case 'verify':
    case 'store':
      return adminCommand(command, rest)
    case 'swarm-key':
      process.stdout.write((await import('../p2p/node.js')).generateSwarmKey())
      return
    case 'version':
    case '--version':
      process.stdout.write(`shoal ${VERSION}\n`)
      return
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE)
      return
    default:
      process.stderr.write(`shoal: unknown command "${command}"\n\n${USAGE}`)
      process.exit(EXIT_USAGE)
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError) {
    process.stderr.write(`shoal: ${err.message}\n`)
    process.exit(EXIT_USAGE)
  }
  if ((err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || (err as { code?: string }).code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    process.stderr.write(`shoal: ${(err as Error).message}\n`)
    process.exit(EXIT_USAGE)
  }
  if (err instanceof StoreLockedError) {
    process.stderr.write(`shoal: cannot start: ${err.message} (stop it first, or use another --data-dir)\n`)
    process.exit(1)
  }
  if (err instanceof AdminCommandError) {
    process.stderr.write(`shoal: ${err.message}\n`)
    process.exit(1)
  }
  process.stderr.write(`shoal: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
