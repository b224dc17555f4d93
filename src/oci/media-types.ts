export const MediaType = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const

/** What a client that sent no Accept header is assumed to take. */
export const DEFAULT_MANIFEST_ACCEPT = [
  MediaType.ociIndex,
  MediaType.ociManifest,
  MediaType.dockerManifestList,
  MediaType.dockerManifest,
].join(', ')

/** Manifests larger than this are refused (distribution uses 4 MiB). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024
