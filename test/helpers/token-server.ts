/**
 * A Bearer token server for distribution's `auth: token:` mode (Docker token auth spec).
 *
 * Tokens are ES256 JWTs whose header carries the signing certificate in `x5c`; the self-signed
 * certificate is the registry's `rootcertbundle`. distribution 2.8.2 checks: the signature
 * (libtrust: ES256 wants the raw r||s signature), the x5c chain against the bundle, `iss` equal
 * to its `issuer`, `aud` containing its `service`, and exp/nbf (with 60 s of leeway), then
 * matches `access` against the request's scope.
 */
import { execFile } from 'node:child_process'
import { type KeyObject, X509Certificate, createPrivateKey, randomUUID, sign } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

const execFileAsync = promisify(execFile)

export interface TokenRequest {
  /** every `scope` query parameter, joined with a space; null when none */
  scope: string | null
  service: string | null
  authorization: string | null
}

export interface TokenServer {
  /** http://127.0.0.1:PORT/token */
  realm: string
  service: string
  issuer: string
  /** path of the PEM certificate to give the registry as rootcertbundle */
  rootCertBundle: string
  /** every GET to the realm, in order (refused ones included) */
  requests: TokenRequest[]
  /** a token for these scopes, as the server would issue it */
  issue(scopes: string[], subject?: string): string
  close(): Promise<void>
}

export interface TokenServerOptions {
  /** token lifetime in seconds; default 300 */
  expiresIn?: number
  /** if set, the realm requires these Basic credentials (anonymous requests get 401) */
  basic?: { username: string; password: string }
  /** default 'shoal-test-registry' */
  service?: string
  /** default 'shoal-test-issuer' */
  issuer?: string
}

const DEFAULT_EXPIRES_IN_S = 300
const TOKEN_PATH = '/token'

interface Access {
  type: string
  name: string
  actions: string[]
}

function base64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url')
}

/**
 * "repository:NAME:pull,push" → access entry granting pull and push. The name may hold a
 * host:port, so type is up to the first colon and the actions after the last.
 */
function parseScope(scope: string): Access | null {
  const first = scope.indexOf(':')
  const last = scope.lastIndexOf(':')
  if (first === -1 || last === first) return null
  const type = scope.slice(0, first)
  const name = scope.slice(first + 1, last)
  if (type === 'repository') return { type, name, actions: ['pull', 'push'] }
  return { type, name, actions: scope.slice(last + 1).split(',').filter((a) => a !== '') }
}

export async function startTokenServer(opts: TokenServerOptions = {}): Promise<TokenServer> {
  const expiresIn = opts.expiresIn ?? DEFAULT_EXPIRES_IN_S
  const service = opts.service ?? 'shoal-test-registry'
  const issuer = opts.issuer ?? 'shoal-test-issuer'
  const dir = await mkdtemp(join(tmpdir(), 'shoal-token-'))
  const keyFile = join(dir, 'key.pem')
  const certFile = join(dir, 'cert.pem')
  let key: KeyObject
  let x5c: string
  try {
    await execFileAsync('openssl', [
      'req', '-x509', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
      '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=shoal-test-token-issuer',
    ])
    key = createPrivateKey(await readFile(keyFile))
    x5c = new X509Certificate(await readFile(certFile)).raw.toString('base64')
  } catch (err) {
    await rm(dir, { recursive: true, force: true })
    throw new Error('cannot create the token signing key and certificate with openssl', { cause: err })
  }
  const header = base64url(JSON.stringify({ typ: 'JWT', alg: 'ES256', x5c: [x5c] }))

  const issue = (scopes: string[], subject = ''): string => {
    const now = Math.floor(Date.now() / 1000)
    const claims = {
      iss: issuer,
      sub: subject,
      aud: service,
      exp: now + expiresIn,
      nbf: now - 1,
      iat: now,
      jti: randomUUID(),
      access: scopes.map(parseScope).filter((a): a is Access => a !== null),
    }
    const signingInput = `${header}.${base64url(JSON.stringify(claims))}`
    const signature = sign('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' })
    return `${signingInput}.${base64url(signature)}`
  }

  const requests: TokenRequest[] = []
  const expectedBasic =
    opts.basic === undefined
      ? null
      : `Basic ${Buffer.from(`${opts.basic.username}:${opts.basic.password}`).toString('base64')}`

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const send = (status: number, body: unknown, headers: Record<string, string> = {}): void => {
      const bytes = Buffer.from(JSON.stringify(body))
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': bytes.length, ...headers })
      res.end(bytes)
    }
    if (url.pathname !== TOKEN_PATH) {
      send(404, { error: 'not found' })
      return
    }
    // OAuth2 POST: 404 makes containerd fall back to the GET flow
    if (req.method !== 'GET') {
      send(404, { error: 'use GET' })
      return
    }

    const scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter((s) => s !== '')
    const authorization = req.headers.authorization ?? null
    requests.push({
      scope: scopes.length === 0 ? null : scopes.join(' '),
      service: url.searchParams.get('service'),
      authorization,
    })
    let subject = ''
    if (expectedBasic !== null) {
      if (authorization !== expectedBasic) {
        send(401, { errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] }, {
          'www-authenticate': 'Basic realm="shoal-test"',
        })
        return
      }
      subject = opts.basic!.username
    }
    const token = issue(scopes, subject)
    send(200, { token, access_token: token, expires_in: expiresIn, issued_at: new Date().toISOString() })
  }

  const server = createServer(handle)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const { port } = server.address() as AddressInfo

  return {
    realm: `http://127.0.0.1:${port}${TOKEN_PATH}`,
    service,
    issuer,
    rootCertBundle: certFile,
    requests,
    issue,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      await rm(dir, { recursive: true, force: true })
    },
  }
}
