import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BlobSizes } from '../../src/transfer/blob-sizes.js'

const d = (c: string) => `sha256:${c.repeat(64)}`

describe('blob sizes named by manifests', () => {
  it('records the config and layer sizes of an image manifest', () => {
    const sizes = new BlobSizes()
    const manifest = {
      schemaVersion: 2,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: d('a'), size: 504 },
      layers: [
        { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d('b'), size: 44_744_553 },
        { digest: d('c'), size: -1 },
        { digest: 'sha256:short', size: 7 },
        { digest: d('e'), size: '12' },
        null,
      ],
    }
    sizes.noteManifest(d('f'), Buffer.from(JSON.stringify(manifest)))
    assert.equal(sizes.get(d('a')), 504)
    assert.equal(sizes.get(d('b')), 44_744_553)
    for (const bad of [d('c'), 'sha256:short', d('e')]) assert.equal(sizes.get(bad), undefined)
  })

  it('ignores indexes, bodies that are not JSON, and HEAD answers without a body', () => {
    const sizes = new BlobSizes()
    sizes.noteManifest(d('1'), Buffer.from(JSON.stringify({ manifests: [{ digest: d('2'), size: 10 }] })))
    sizes.noteManifest(d('3'), Buffer.from('{not json'))
    sizes.noteManifest(d('4'), undefined)
    assert.equal(sizes.get(d('2')), undefined)
  })
})
