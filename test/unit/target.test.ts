import assert from 'node:assert/strict'
import { test } from 'node:test'
import { OciError } from '../../src/oci/errors.js'
import { resolveTarget } from '../../src/registry/target.js'

const rules = {
  upstreams: new Map<string, unknown>([
    ['docker.io', 1],
    ['ghcr.io', 1],
    ['127.0.0.1:5000', 1],
  ]),
  defaultRegistry: 'docker.io',
}

test('ns names the registry (containerd)', () => {
  assert.deepEqual(resolveTarget(['demo', 'app'], '127.0.0.1:5000', rules), { registry: '127.0.0.1:5000', name: 'demo/app', viaNs: true })
  assert.deepEqual(resolveTarget(['alpine'], 'docker.io', rules), { registry: 'docker.io', name: 'library/alpine', viaNs: true })
})

test('a leading host segment names the registry (CRI-O, podman)', () => {
  assert.deepEqual(resolveTarget(['docker.io', 'library', 'alpine'], undefined, rules), {
    registry: 'docker.io',
    name: 'library/alpine',
    viaNs: false,
  })
  assert.deepEqual(resolveTarget(['ghcr.io', 'org', 'x'], undefined, rules).name, 'org/x')
  assert.deepEqual(resolveTarget(['127.0.0.1:5000', 'demo'], undefined, rules).registry, '127.0.0.1:5000')
})

test('no registry named: the default one (Docker Engine), with library/ for Hub', () => {
  assert.deepEqual(resolveTarget(['alpine'], undefined, rules), { registry: 'docker.io', name: 'library/alpine', viaNs: false })
  assert.deepEqual(resolveTarget(['bitnami', 'redis'], undefined, rules).name, 'bitnami/redis')
})

test('unconfigured registries are refused with NAME_UNKNOWN and a hint', () => {
  for (const [segments, ns] of [
    [['a'], 'evil.example.com'],
    [['quay.io', 'x', 'y'], undefined],
  ] as const) {
    assert.throws(
      () => resolveTarget([...segments], ns, rules),
      (err: unknown) => err instanceof OciError && err.status === 404 && err.code === 'NAME_UNKNOWN' && /--upstream/.test(err.message),
    )
  }
})

test('invalid names and ns values are 400', () => {
  assert.throws(() => resolveTarget(['Upper'], undefined, rules), (e: unknown) => e instanceof OciError && e.code === 'NAME_INVALID')
  assert.throws(() => resolveTarget(['a'], 'bad/ns', rules), (e: unknown) => e instanceof OciError && e.code === 'NAME_INVALID')
})
