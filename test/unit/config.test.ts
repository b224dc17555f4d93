import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { envName, loadConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/config/schema.js'

const dir = mkdtempSync(join(tmpdir(), 'shoal-config-'))
function file(name: string, text: string): string {
  const path = join(dir, name)
  writeFileSync(path, text)
  return path
}

test('built-in defaults come from config/default.yaml', () => {
  const c = loadConfig({ env: {} })
  assert.equal(c.listen.host, '127.0.0.1')
  assert.equal(c.listen.port, 5050)
  assert.equal(c.defaultRegistry, 'docker.io')
  assert.equal(c.upstreams.get('docker.io')?.href, 'https://registry-1.docker.io/')
  for (const r of ['ghcr.io', 'quay.io', 'registry.k8s.io', 'gcr.io', 'mcr.microsoft.com']) assert.ok(c.upstreams.has(r), r)
  assert.equal(c.manifests.tagTtlMs, 30_000)
  assert.ok(Object.isFrozen(c))
})

test('flags win over env, env over file, file over defaults', () => {
  const path = file('a.yaml', 'listen: 127.0.0.1:1111\nlogLevel: debug\ndataDir: /from/file\nmanifests: {tagTtl: 5m}\n')
  const fromFile = loadConfig({ file: path, env: {} })
  assert.equal(fromFile.listen.port, 1111)
  assert.equal(fromFile.manifests.tagTtlMs, 300_000)
  const fromEnv = loadConfig({ file: path, env: { SHOAL_LISTEN: '127.0.0.1:2222', SHOAL_DATA_DIR: '/from/env', SHOAL_MANIFESTS_TAG_TTL: '10s' } })
  assert.equal(fromEnv.listen.port, 2222)
  assert.equal(fromEnv.dataDir, '/from/env')
  assert.equal(fromEnv.logLevel, 'debug')
  assert.equal(fromEnv.manifests.tagTtlMs, 10_000)
  const fromFlags = loadConfig({ file: path, env: { SHOAL_LISTEN: '127.0.0.1:2222' }, flags: { listen: '0.0.0.0:3333', dataDir: '/from/flag' } })
  assert.equal(fromFlags.listen.port, 3333)
  assert.equal(fromFlags.dataDir, '/from/flag')
})

test('SHOAL_CONFIG names the file when --config is absent', () => {
  const path = file('b.yaml', 'defaultRegistry: ghcr.io\n')
  assert.equal(loadConfig({ env: { SHOAL_CONFIG: path } }).defaultRegistry, 'ghcr.io')
})

test('upstreams add up from every source; http is kept, https is the default scheme', () => {
  const path = file('c.yaml', 'upstreams:\n  reg.example.com: reg.example.com:8443\n')
  const c = loadConfig({
    file: path,
    env: { SHOAL_UPSTREAM: 'a.test=http://127.0.0.1:1, b.test=http://127.0.0.1:2' },
    flags: { upstreams: ['127.0.0.1:5000=http://127.0.0.1:5000', 'a.test=http://127.0.0.1:9'] },
  })
  assert.equal(c.upstreams.get('reg.example.com')?.href, 'https://reg.example.com:8443/')
  assert.equal(c.upstreams.get('a.test')?.href, 'http://127.0.0.1:9/')
  assert.equal(c.upstreams.get('b.test')?.href, 'http://127.0.0.1:2/')
  assert.equal(c.upstreams.get('127.0.0.1:5000')?.href, 'http://127.0.0.1:5000/')
  assert.ok(c.upstreams.has('docker.io'))
})

test('credentials from the file, a password file or an env variable', () => {
  const pw = file('pw', 'file-secret\n')
  const path = file(
    'd.yaml',
    `credentials:\n  a.test: {username: u1, password: p1}\n  b.test: {username: u2, passwordFile: ${pw}}\n  c.test: {username: u3, passwordEnv: PW3}\n`,
  )
  const c = loadConfig({ file: path, env: { PW3: 'env-secret' } })
  assert.deepEqual(c.credentials.get('a.test'), { username: 'u1', password: 'p1' })
  assert.deepEqual(c.credentials.get('b.test'), { username: 'u2', password: 'file-secret' })
  assert.deepEqual(c.credentials.get('c.test'), { username: 'u3', password: 'env-secret' })
})

test('invalid values name their key', () => {
  const cases: [Parameters<typeof loadConfig>[0], string][] = [
    [{ env: { SHOAL_LISTEN: 'nope' } }, 'listen'],
    [{ env: { SHOAL_LISTEN: '1.2.3.4:70000' } }, 'listen'],
    [{ env: { SHOAL_LOG_LEVEL: 'loud' } }, 'logLevel'],
    [{ env: { SHOAL_MANIFESTS_TAG_TTL: 'soon' } }, 'manifests.tagTtl'],
    [{ env: { SHOAL_ORIGIN_RETRIES: '99' } }, 'origin.retries'],
    [{ env: { SHOAL_DEFAULT_REGISTRY: 'nowhere.test' } }, 'defaultRegistry'],
    [{ flags: { upstreams: ['no-equals-sign'] } }, '--upstream'],
    [{ flags: { upstreams: ['x.test=ftp://x'] } }, '--upstream.x.test'],
    [{ file: file('e.yaml', 'listen: [1, 2\n') }, 'config'],
    [{ file: file('f.yaml', 'lisen: 127.0.0.1:1\n') }, 'lisen'],
    [{ file: file('g.yaml', 'credentials:\n  a.test: {username: u}\n') }, 'credentials.a.test'],
    [{ file: join(dir, 'missing.yaml') }, 'config'],
  ]
  for (const [sources, key] of cases) {
    assert.throws(
      () => loadConfig({ env: {}, ...sources }),
      (err: unknown) => err instanceof ConfigError && err.key === key,
      `expected an error for ${key}`,
    )
  }
})

test('env names follow the keys', () => {
  assert.equal(envName('dataDir'), 'SHOAL_DATA_DIR')
  assert.equal(envName('manifests.tagTtl'), 'SHOAL_MANIFESTS_TAG_TTL')
})

test('the CLI prints one line naming the key and exits 2 on bad config', () => {
  const main = new URL('../../src/cli/main.js', import.meta.url).pathname
  const r = spawnSync(process.execPath, [main, 'daemon', '--listen', 'bogus'], { encoding: 'utf8', timeout: 10_000 })
  assert.equal(r.status, 2)
  assert.match(r.stderr, /^shoal: invalid config: listen: .+\n$/)
  const unknown = spawnSync(process.execPath, [main, 'daemon', '--bogus'], { encoding: 'utf8', timeout: 10_000 })
  assert.equal(unknown.status, 2)
})

test('p2p: defaults, lists from env and repeated flags, caps and chunk size checked', () => {
  const d = loadConfig({ env: {} }).p2p
  assert.equal(d.enabled, true)
  assert.deepEqual(d.listen, ['/ip4/0.0.0.0/tcp/5051'])
  assert.deepEqual(d.bootstrap, [])
  assert.equal(d.encrypt, true)
  assert.equal(d.chunkSize, 1024 * 1024)
  assert.equal(d.downloadRate, 0)
  const c = loadConfig({
    env: { SHOAL_P2P_BOOTSTRAP: '/ip4/10.0.0.1/tcp/5051, dns:shoal.kube-system:5051', SHOAL_P2P_DOWNLOAD_RATE: '50MB', SHOAL_P2P_ENCRYPT: 'false' },
    flags: { 'p2p.listen': ['/ip4/127.0.0.1/tcp/0', '/ip6/::1/tcp/0'], 'p2p.enabled': 'false', 'p2p.peerListen': '127.0.0.1:0' },
  }).p2p
  assert.deepEqual(c.bootstrap, ['/ip4/10.0.0.1/tcp/5051', 'dns:shoal.kube-system:5051'])
  assert.deepEqual(c.listen, ['/ip4/127.0.0.1/tcp/0', '/ip6/::1/tcp/0'])
  assert.equal(c.enabled, false)
  assert.equal(c.encrypt, false)
  assert.equal(c.downloadRate, 50e6)
  assert.deepEqual(c.peerListen, { host: '127.0.0.1', port: 0 })
  assert.throws(() => loadConfig({ env: { SHOAL_P2P_CHUNK_SIZE: '1KiB' } }), /p2p\.chunkSize/)
  assert.throws(() => loadConfig({ flags: { 'p2p.swarmKeyFile': '/nonexistent/swarm.key' } }), /p2p\.swarmKeyFile/)
  assert.throws(() => loadConfig({ env: { SHOAL_P2P_ORIGIN_FETCHERS: '0' } }), /p2p\.originFetchers/)
})
