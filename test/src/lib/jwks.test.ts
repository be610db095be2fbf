import t from 'tap'
import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { authOnly, build } from '../../helpers/build.js'
import { nowSec, signJwt } from '../../helpers/tokens.js'
import { TestClient } from '../../helpers/ws-client.js'

function rsa (): { jwk: object, privateKey: KeyObject } {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  return { jwk: publicKey.export({ format: 'jwk' }), privateKey }
}

/** A JWKS endpoint whose key set the test can change; counts its fetches; `hang` leaves requests unanswered. */
async function jwksServer (t: Parameters<typeof build>[0]): Promise<{ url: string, keys: Array<object | null>, fetches: () => number, status: { code: number, hang?: boolean } }> {
  const keys: Array<object | null> = []
  const status: { code: number, hang?: boolean } = { code: 200 }
  let fetches = 0
  const server = createServer((req, res) => {
    fetches++
    if (status.hang === true) return
    res.writeHead(status.code, { 'content-type': 'application/json' })
    res.end(JSON.stringify(req.url?.endsWith('/nothing') === true ? {} : { keys }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  }))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`, keys, fetches: () => fetches, status }
}

const claims = (sub: string): Record<string, unknown> => ({ sub, iat: nowSec(), exp: nowSec() + 600 })

t.test('tokens verified against a JWKS endpoint', async (t) => {
  const endpoint = await jwksServer(t)
  const first = rsa()
  const second = rsa()
  const encryption = rsa()
  endpoint.keys.push({ ...first.jwk, kid: 'k1', use: 'sig', alg: 'RS256' }, { ...second.jwk, kid: 'k2' })
  // An encryption key and a key without kid are ignored.
  endpoint.keys.push({ ...encryption.jwk, kid: 'enc', use: 'enc' }, { ...rsa().jwk })
  const { app, wsUrl } = await build(t, { env: { JWT_SECRET: '', JWT_JWKS_URL: endpoint.url } })

  const good = signJwt(claims('jwks-user'), { alg: 'RS256', key: first.privateKey, header: { kid: 'k1' } })
  const { welcome, client } = await TestClient.connect(wsUrl, { token: good })
  t.equal(welcome.userId, 'jwks-user', 'a token signed by a published key is accepted')
  t.equal(endpoint.fetches(), 1, 'keys fetched once')
  await client.close()
  const other = await TestClient.connect(wsUrl, { token: signJwt(claims('second-key'), { alg: 'RS256', key: second.privateKey, header: { kid: 'k2' } }) })
  t.equal(other.welcome.userId, 'second-key', 'every key of the set is usable')
  t.equal(endpoint.fetches(), 1, 'the second key came with the first fetch')
  await other.client.close()
  // The `auth` message verifies a bare token, outside any request.
  t.match(await app.verifyToken(good), { sub: 'jwks-user' }, 'a bare token is verified against the key set too')
  await t.rejects(app.verifyToken(signJwt(claims('x'), { alg: 'RS256', key: second.privateKey, header: { kid: 'k1' } })), { code: 'WS_TOKEN_INVALID' }, 'and a bad one refused')

  t.equal((await TestClient.refused(wsUrl, { token: signJwt(claims('x'), { alg: 'RS256', key: first.privateKey }) })).status, 401, 'no kid -> 401')
  t.equal((await TestClient.refused(wsUrl, { token: signJwt(claims('x'), { alg: 'RS256', key: rsa().privateKey, header: { kid: 'k1' } }) })).status, 401, 'wrong key for the kid -> 401')
  t.equal((await TestClient.refused(wsUrl, { token: signJwt(claims('x'), { alg: 'RS256', key: encryption.privateKey, header: { kid: 'enc' } }) })).status, 401, 'an encryption key is not a signing key')
  t.equal((await TestClient.refused(wsUrl, { token: signJwt(claims('x'), { alg: 'HS256', key: 'x'.repeat(40), header: { kid: 'k1' } }) })).status, 401, 'HS256 is not accepted with JWKS')
  for (let i = 0; i < 10; i++) {
    t.equal((await TestClient.refused(wsUrl, { token: signJwt(claims('x'), { alg: 'RS256', key: first.privateKey, header: { kid: `random-${i}` } }) })).status, 401, `random kid ${i} -> 401`)
  }
  t.equal(endpoint.fetches(), 1, 'unknown kids do not refetch within the minimum interval')

  // Once the keys' 10 minutes are over, a known kid fetches the set again too.
  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  Date.now = () => realNow() + 601_000
  const later = { sub: 'later', iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 600 }
  const again = await TestClient.connect(wsUrl, { token: signJwt(later, { alg: 'RS256', key: first.privateKey, header: { kid: 'k1' } }) })
  t.equal(again.welcome.userId, 'later')
  t.equal(endpoint.fetches(), 2, 'the key set is fetched again after 10 minutes')
  await again.client.close()
})

t.test('Ed25519 keys verify EdDSA tokens', async (t) => {
  const endpoint = await jwksServer(t)
  const { publicKey, privateKey } = generateKeyPairSync('ed25519')
  endpoint.keys.push({ ...publicKey.export({ format: 'jwk' }), kid: 'ed' })
  const app = await authOnly(t, { jwt: { jwksUrl: endpoint.url, algorithms: ['EdDSA'], clockToleranceSec: 1, devSecret: false }, allowedOrigins: null })
  app.get('/me', { onRequest: [app.authenticateUser] }, async (request) => ({ sub: request.user.sub }))
  // signJwt knows RS* and HS* only: EdDSA signs the input here.
  const input = [{ alg: 'EdDSA', typ: 'JWT', kid: 'ed' }, claims('ed-user')].map((part) => Buffer.from(JSON.stringify(part)).toString('base64url')).join('.')
  const token = `${input}.${sign(null, Buffer.from(input), privateKey).toString('base64url')}`
  const res = await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { sub: 'ed-user' })
})

t.test('a JWKS endpoint that does not answer refuses the token after the 5 s fetch timeout', async (t) => {
  const endpoint = await jwksServer(t)
  endpoint.status.hang = true
  // The handshake timeout is raised so that only the fetch timeout can end the wait.
  const { wsUrl } = await build(t, { env: { JWT_SECRET: '', JWT_JWKS_URL: endpoint.url, HANDSHAKE_TIMEOUT_MS: '30000' } })
  const token = signJwt(claims('x'), { alg: 'RS256', key: rsa().privateKey, header: { kid: 'k1' } })
  t.equal((await TestClient.refused(wsUrl, { token, timeoutMs: 10_000 })).status, 401)
  t.equal(endpoint.fetches(), 1, 'one fetch, abandoned')
})

t.test('an unknown kid refetches the key set once the interval has passed (rotation)', async (t) => {
  const endpoint = await jwksServer(t)
  const { wsUrl } = await build(t, { env: { JWT_SECRET: '', JWT_JWKS_URL: endpoint.url } })
  endpoint.status.code = 503
  const rotated = rsa()
  const empty = await jwksServer(t)
  const emptyGateway = await build(t, { env: { JWT_SECRET: '', JWT_JWKS_URL: empty.url.replace(/jwks\.json$/, 'nothing') } })
  t.equal((await TestClient.refused(emptyGateway.wsUrl, { token: signJwt(claims('x'), { alg: 'RS256', key: rotated.privateKey, header: { kid: 'k2' } }) })).status, 401, 'a key set without keys verifies nothing')
  const token = signJwt(claims('rotated'), { alg: 'RS256', key: rotated.privateKey, header: { kid: 'k2' } })
  t.equal((await TestClient.refused(wsUrl, { token })).status, 401, 'endpoint down -> 401')
  endpoint.status.code = 200
  endpoint.keys.push({ ...rotated.jwk, kid: 'k2' })
  // The failed fetch starts the minimum interval: move the clock past it.
  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  Date.now = () => realNow() + 31_000
  const { welcome } = await TestClient.connect(wsUrl, { token: signJwt({ sub: 'rotated', iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 600 }, { alg: 'RS256', key: rotated.privateKey, header: { kid: 'k2' } }) })
  t.equal(welcome.userId, 'rotated', 'the rotated key is fetched and used')
  t.equal(endpoint.fetches(), 2)
})

t.test('one bad JWKS key does not reject every token: it is skipped and logged once', async (t) => {
  const endpoint = await jwksServer(t)
  const good = rsa()
  endpoint.keys.push({ kty: 'oct', kid: 'k0' }, null, { ...good.jwk, kid: 'k1' })
  const { wsUrl, logs } = await build(t, { env: { JWT_SECRET: '', JWT_JWKS_URL: endpoint.url }, captureLogs: 'warn' })
  for (const sub of ['first', 'second']) {
    const { welcome, client } = await TestClient.connect(wsUrl, { token: signJwt(claims(sub), { alg: 'RS256', key: good.privateKey, header: { kid: 'k1' } }) })
    t.equal(welcome.userId, sub, `a token signed by the good key is accepted beside the bad one (${sub})`)
    await client.close()
  }
  t.equal((await TestClient.refused(wsUrl, { token: signJwt(claims('x'), { alg: 'HS256', key: 'x'.repeat(40), header: { kid: 'k0' } }) })).status, 401, 'the bad key verifies nothing')

  // A refetch (for the unknown kid k0) finds the bad key again: it is not logged again.
  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  Date.now = () => realNow() + 31_000
  const later = { sub: 'later', iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 600 }
  t.equal((await TestClient.refused(wsUrl, { token: signJwt(later, { alg: 'RS256', key: good.privateKey, header: { kid: 'k0' } }) })).status, 401)
  t.equal(endpoint.fetches(), 2, 'the key set was fetched again')
  const { welcome, client } = await TestClient.connect(wsUrl, { token: signJwt(later, { alg: 'RS256', key: good.privateKey, header: { kid: 'k1' } }) })
  t.equal(welcome.userId, 'later', 'the good key still verifies after the refetch')
  await client.close()

  const warnings = logs.map((line) => JSON.parse(line)).filter((entry) => entry.kid === 'k0')
  t.equal(warnings.length, 1, 'the bad key is logged once, not per token or per fetch')
  t.match(warnings[0], { level: 40, kid: 'k0', msg: /JWKS key/ })
})
