import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import Fastify from 'fastify'
import authPlugin, { type AuthOptions } from '../../plugins/auth.js'
import { authOnly, build } from '../helpers/build.js'
import { newUser, nowSec, rsaKeyPair, serviceToken, signJwt, TEST_SECRET, userToken } from '../helpers/tokens.js'
import { TestClient, type OpenOptions } from '../helpers/ws-client.js'

// Many real handshakes and several app instances: past the default 30 s on a busy machine.
t.setTimeout(60_000)

/** The HTTP status of a handshake: 101 when upgraded (the socket is then closed). */
async function handshake (wsUrl: string, opts: OpenOptions = {}): Promise<number> {
  try {
    const client = await TestClient.open(wsUrl, opts)
    await client.close()
    return 101
  } catch (err) {
    const status = (err as { status?: unknown }).status
    if (typeof status === 'number') return status
    throw err
  }
}

async function request (url: string, init: RequestInit = {}): Promise<{ status: number, body: string }> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(5000) })
  return { status: res.status, body: await res.text() }
}

t.test('handshake without a valid token is refused with 401', async (t) => {
  const { wsUrl } = await build(t)
  const sub = newUser()
  const cases: Array<[string, string | undefined]> = [
    ['no token', undefined],
    ['garbage', 'not-a-jwt'],
    ['wrong key', signJwt({ sub, iat: nowSec(), exp: nowSec() + 3600 }, { key: 'another-secret-that-is-long-enough-too!!' })],
    ['alg none', signJwt({ sub, iat: nowSec(), exp: nowSec() + 3600 }, { alg: 'none' })],
    ['HS384 when HS256 is pinned', signJwt({ sub, iat: nowSec(), exp: nowSec() + 3600 }, { alg: 'HS384' })],
    ['expired', userToken(sub, { iat: nowSec() - 7200, exp: nowSec() - 60 })],
    ['future nbf', userToken(sub, { nbf: nowSec() + 60 })],
    ['missing sub', signJwt({ iat: nowSec(), exp: nowSec() + 3600 })],
    ['missing exp', signJwt({ sub, iat: nowSec() })],
    ['empty sub', userToken('')],
    ['numeric sub', signJwt({ sub: 42 as unknown as string, iat: nowSec(), exp: nowSec() + 3600 })],
    ['sub over 256 characters', userToken('u'.repeat(257))],
    ['tampered payload', (() => {
      const [h, , s] = userToken(sub).split('.')
      return `${h}.${Buffer.from(JSON.stringify({ sub: 'admin', exp: nowSec() + 3600 })).toString('base64url')}.${s}`
    })()]
  ]
  for (const [name, token] of cases) {
    t.equal(await handshake(wsUrl, { token }), 401, name)
  }
  // The attempt limit counts only authenticated users: none of the above used up `sub`.
  const { client, welcome } = await TestClient.connect(wsUrl, { token: userToken(sub) })
  t.equal(welcome.userId, sub, 'the user can still connect')
  await client.close()
})

t.test('RS256 key: a valid RS256 token is accepted, HS256 signed with the public PEM (key confusion) is 401', async (t) => {
  const { publicPem, privateKey } = rsaKeyPair()
  const file = join(t.testdir(), 'jwt.pub.pem')
  writeFileSync(file, publicPem)
  const { wsUrl } = await build(t, { env: { JWT_SECRET: '', JWT_PUBLIC_KEY_FILE: file } })
  const sub = newUser()
  const claims = { sub, iat: nowSec(), exp: nowSec() + 3600 }

  t.equal(await handshake(wsUrl, { token: signJwt(claims, { alg: 'HS256', key: publicPem }) }), 401, 'HS256 with the PEM text as secret')
  t.equal(await handshake(wsUrl, { token: signJwt(claims, { alg: 'HS256', key: publicPem.trim() }) }), 401, 'HS256 with the trimmed PEM as secret')
  t.equal(await handshake(wsUrl, { token: signJwt(claims, { alg: 'none' }) }), 401, 'alg none')
  t.equal(await handshake(wsUrl, { token: userToken(sub) }), 401, 'HS256 with the test secret')

  const { client, welcome } = await TestClient.connect(wsUrl, { token: signJwt(claims, { alg: 'RS256', key: privateKey }) })
  t.equal(welcome.userId, sub)
  await client.close()
})

t.test('the token is accepted from ?token=, Authorization: Bearer and the access_token cookie', async (t) => {
  const { wsUrl } = await build(t)

  const fromQuery = newUser()
  const q = await TestClient.connect(wsUrl, { token: userToken(fromQuery) })
  t.equal(q.welcome.userId, fromQuery, '?token=')

  const fromHeader = newUser()
  const h = await TestClient.connect(wsUrl, { headers: { authorization: `Bearer ${userToken(fromHeader)}` } })
  t.equal(h.welcome.userId, fromHeader, 'Authorization: Bearer')

  const lowerCase = newUser()
  const l = await TestClient.connect(wsUrl, { headers: { authorization: `bearer ${userToken(lowerCase)}` } })
  t.equal(l.welcome.userId, lowerCase, 'the scheme is case-insensitive')

  const fromCookie = newUser()
  const c = await TestClient.connect(wsUrl, { headers: { cookie: `theme=dark; access_token=${userToken(fromCookie)}` } })
  t.equal(c.welcome.userId, fromCookie, 'access_token cookie')

  // An empty ?token= does not hide the header.
  const emptyQuery = newUser()
  const e = await TestClient.connect(`${wsUrl}?token=`, { headers: { authorization: `Bearer ${userToken(emptyQuery)}` } })
  t.equal(e.welcome.userId, emptyQuery, 'empty ?token= falls back to the header')

  t.equal(await handshake(wsUrl, { headers: { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` } }), 401, 'Basic credentials are not a token')
  t.equal(await handshake(wsUrl, { headers: { cookie: 'access_token=' } }), 401, 'empty cookie')

  for (const { client } of [q, h, l, c, e]) await client.close()
})

t.test('JWT_ISSUER and JWT_AUDIENCE are enforced when set', async (t) => {
  const { wsUrl } = await build(t, { env: { JWT_ISSUER: 'https://idp.example.com', JWT_AUDIENCE: 'alert-gateway' } })
  const sub = newUser()
  const good = { iss: 'https://idp.example.com', aud: 'alert-gateway' }
  // A missing claim does not match a configured one.
  t.equal(await handshake(wsUrl, { token: userToken(sub) }), 401, 'neither iss nor aud')
  t.equal(await handshake(wsUrl, { token: userToken(sub, { aud: 'alert-gateway' }) }), 401, 'missing iss')
  t.equal(await handshake(wsUrl, { token: userToken(sub, { iss: 'https://idp.example.com' }) }), 401, 'missing aud')
  t.equal(await handshake(wsUrl, { token: userToken(sub, { ...good, iss: 'https://evil.example.com' }) }), 401, 'wrong iss')
  t.equal(await handshake(wsUrl, { token: userToken(sub, { ...good, aud: 'other-service' }) }), 401, 'wrong aud')

  const one = await TestClient.connect(wsUrl, { token: userToken(sub, good) })
  t.equal(one.welcome.userId, sub, 'matching iss and aud')
  await one.client.close()
  const listed = newUser()
  const two = await TestClient.connect(wsUrl, { token: userToken(listed, { ...good, aud: ['other-service', 'alert-gateway'] }) })
  t.equal(two.welcome.userId, listed, 'aud as an array containing the audience')
  await two.client.close()
})

t.test('ALLOWED_ORIGINS refuses foreign origins with 403 and accepts listed ones', async (t) => {
  const { wsUrl } = await build(t, { env: { ALLOWED_ORIGINS: 'https://app.example.com, http://localhost:8080' } })
  const refused: Array<[string, string]> = [
    ['foreign origin', 'https://evil.example.com'],
    ['listed host with another scheme', 'http://app.example.com'],
    ['listed host with another port', 'http://localhost:8081'],
    ['a subdomain of a listed host', 'https://x.app.example.com'],
    ['Origin: null', 'null'],
    // Regression: these contain an allowed origin but are not one.
    ['allowed origin with a path', 'https://app.example.com/evil/path'],
    ['allowed origin with credentials', 'https://attacker@app.example.com'],
    ['allowed host percent-encoded', 'https://app%2eexample.com'],
    ['not a URL', 'app.example.com'],
    ['not http(s)', 'file://app.example.com']
  ]
  for (const [name, origin] of refused) {
    t.equal(await handshake(wsUrl, { token: userToken(newUser()), headers: { origin } }), 403, name)
  }
  // The origin is checked before the token: a foreign page learns nothing about its token.
  t.equal(await handshake(wsUrl, { headers: { origin: 'https://evil.example.com' } }), 403, 'foreign origin without a token')

  const accepted: Array<[string, Record<string, string>]> = [
    ['listed origin', { origin: 'https://app.example.com' }],
    ['different case', { origin: 'HTTPS://App.Example.COM' }],
    ['explicit default port :443', { origin: 'https://app.example.com:443' }],
    ['second listed origin', { origin: 'http://localhost:8080' }],
    ['no Origin header (non-browser client)', {}]
  ]
  for (const [name, headers] of accepted) {
    const sub = newUser()
    const { client, welcome } = await TestClient.connect(wsUrl, { token: userToken(sub), headers })
    t.equal(welcome.userId, sub, name)
    await client.close()
  }
})

t.test('without ALLOWED_ORIGINS any origin is accepted', async (t) => {
  const { wsUrl } = await build(t)
  const sub = newUser()
  const { client, welcome } = await TestClient.connect(wsUrl, { token: userToken(sub), headers: { origin: 'https://anything.example.org' } })
  t.equal(welcome.userId, sub)
  await client.close()
})

t.test('plain GET /ws without an upgrade is 426 (with a valid token), 401 without one', async (t) => {
  const { url } = await build(t)
  const token = userToken(newUser())
  const plain = await request(`${url}/ws`, { headers: { authorization: `Bearer ${token}` } })
  t.equal(plain.status, 426)
  t.notMatch(plain.body, token)
  t.equal((await request(`${url}/ws?token=${token}`)).status, 426, 'token in the query')
  t.equal((await request(`${url}/ws`)).status, 401, 'no token')
})

t.test('a valid token gets a welcome with userId, connectionId, heartbeatMs, reauthMs, maxMessageBytes', async (t) => {
  const { wsUrl } = await build(t, { env: { HEARTBEAT_INTERVAL_MS: '12345', REAUTH_INTERVAL_MS: '67890', WS_MAX_MESSAGE_BYTES: '4096' } })
  const sub = newUser()
  const { client, welcome } = await TestClient.connect(wsUrl, { token: userToken(sub) })
  t.match(welcome, {
    type: 'welcome',
    userId: sub,
    connectionId: /^[0-9a-f-]{36}$/,
    heartbeatMs: 12345,
    reauthMs: 67890,
    maxMessageBytes: 4096
  })
  t.same(Object.keys(welcome).sort(), ['connectionId', 'heartbeatMs', 'maxMessageBytes', 'pos', 'reauthMs', 'type', 'userId'])
  await client.close()

  const { client: again, welcome: second } = await TestClient.connect(wsUrl, { token: userToken(sub) })
  t.not(second.connectionId, welcome.connectionId, 'every connection has its own id')
  await again.close()
})

t.test('tokens never appear in the log output', async (t) => {
  const { url, wsUrl, logs } = await build(t, { captureLogs: 'debug' })
  const sub = newUser()
  const good = userToken(sub)
  const { client } = await TestClient.connect(wsUrl, { token: good })
  client.send({ type: 'auth', token: good })
  client.send({ type: 'ping', id: 'after-auth' })
  await client.next('pong')

  const wrongKey = signJwt({ sub, iat: nowSec(), exp: nowSec() + 3600 }, { key: 'another-secret-that-is-long-enough-too!!' })
  const expired = userToken(sub, { iat: nowSec() - 7200, exp: nowSec() - 60 })
  t.equal(await handshake(wsUrl, { token: wrongKey }), 401)
  t.equal(await handshake(wsUrl, { token: expired }), 401)
  t.equal(await handshake(wsUrl, { headers: { authorization: `Bearer ${wrongKey}` } }), 401)
  t.equal(await handshake(wsUrl, { headers: { cookie: `access_token=${wrongKey}` } }), 401)
  t.equal((await request(`${url}/ws?token=${good}`)).status, 426)

  // Logout revokes `good`: a handshake with it is then refused 403, and a
  // re-auth with it on a fresh session closes that session.
  const other = userToken(sub, { iat: nowSec() })
  t.equal((await request(`${url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${other}` } })).status, 204)
  t.equal((await client.waitClosed()).code, 4403)
  t.equal(await handshake(wsUrl, { token: good }), 403)
  const { client: fresh } = await TestClient.connect(wsUrl, { token: userToken(sub, { iat: nowSec() + 1 }) })
  fresh.send({ type: 'auth', token: good })
  t.equal((await fresh.waitClosed()).code, 4403)

  t.ok(logs.length > 0, 'logs were captured')
  t.ok(logs.some((line) => line.includes('?[redacted]')), 'query strings are logged redacted')
  for (const [name, token] of [['valid', good], ['wrong key', wrongKey], ['expired', expired], ['logout', other]]) {
    const signature = token.split('.')[2]
    const leaks = logs.filter((line) => line.includes(token) || line.includes(signature))
    t.same(leaks, [], `the ${name} token is in no log line`)
  }
})

t.test('POST /alerts needs a token with the alerts:publish scope', async (t) => {
  const { url } = await build(t)
  const publish = (token: string): Promise<{ status: number, body: string }> => request(`${url}/alerts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ target: { all: true }, severity: 'info', title: 'hello' })
  })
  t.equal((await publish(userToken(newUser()))).status, 403, 'no scope')
  t.equal((await publish(userToken(newUser(), { scope: 'alerts:read alerts:publisher' }))).status, 403, 'other scopes only')
  t.equal((await publish(userToken(newUser(), { scope: ['alerts:read'] as unknown as string }))).status, 403, 'scope array without it')
  t.equal((await publish(signJwt({ sub: 'svc', exp: nowSec() + 60, scope: 'alerts:publish' }, { key: 'another-secret-that-is-long-enough-too!!' }))).status, 401, 'invalid token')
  t.equal((await publish(serviceToken())).status, 202, 'scope string')
  t.equal((await publish(userToken('svc-2', { scope: 'alerts:read alerts:publish' }))).status, 202, 'space-separated scopes')
  t.equal((await publish(userToken('svc-3', { scope: ['alerts:read', 'alerts:publish'] as unknown as string }))).status, 202, 'scope array')
})

t.test('the plugin on its own', async (t) => {
  const jwt = { key: TEST_SECRET, algorithms: ['HS256'], clockToleranceSec: 1, devSecret: false }

  t.test('refuses to register without a key, or without the cluster (its revocations)', async (t) => {
    await t.rejects(authOnly(t, { jwt: { ...jwt, key: undefined }, allowedOrigins: null }), /auth: option jwt/)
    const alone = async (opts: AuthOptions): Promise<void> => { await Fastify().register(authPlugin, opts).ready() }
    await t.rejects(alone({ jwt, allowedOrigins: null }), /dependency 'cluster' of plugin 'auth' is not registered/)
  })

  t.test('a revocation lookup that fails refuses the token with 503 (fails closed)', async (t) => {
    // Open sessions keep working while the bus is down; a token whose
    // revocation cannot be read is never accepted.
    const app = await authOnly(t, { jwt, allowedOrigins: null }, async () => { throw new Error('redis down') })
    app.get('/me', { onRequest: [app.authenticateUser] }, async (request) => ({ sub: request.user.sub }))
    const res = await app.inject({ url: '/me', headers: { authorization: `Bearer ${userToken('u1')}` } })
    t.equal(res.statusCode, 503)
    t.equal(res.json().code, 'WS_BUS_UNAVAILABLE')
  })

  t.test('a token without iat is revoked by any logout', async (t) => {
    const app = await authOnly(t, { jwt, allowedOrigins: null }, async () => nowSec() - 3600)
    app.get('/me', { onRequest: [app.authenticateUser] }, async (request) => ({ sub: request.user.sub }))
    const inject = (token: string): Promise<number> => app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } }).then((r) => r.statusCode)
    t.equal(await inject(signJwt({ sub: 'u1', exp: nowSec() + 60 })), 403, 'no iat')
    t.equal(await inject(userToken('u1', { iat: nowSec() - 7200 })), 403, 'iat before the logout')
    t.equal(await inject(userToken('u1')), 200, 'iat after the logout')
  })
})

// Regression (logout by CSRF): a cross-site simple request carrying only the
// access_token cookie (or ?token=) logged the user out. REST routes take the
// Authorization: Bearer header only; the cookie and query stay for /ws.
t.test('logout by CSRF through the cookie or the query is refused with 401', async (t) => {
  const { url, wsUrl } = await build(t)
  const sub = newUser()
  const token = userToken(sub)
  const { client } = await TestClient.connect(wsUrl, { token })
  const csrf = await request(`${url}/auth/logout`, {
    method: 'POST',
    headers: { cookie: `access_token=${token}`, origin: 'https://evil.example', 'content-type': 'text/plain' },
    body: 'x'
  })
  t.equal(csrf.status, 401, 'the cookie alone does not authenticate a logout')
  t.equal((await request(`${url}/auth/logout?token=${token}`, { method: 'POST' })).status, 401, 'nor the query')
  const publish = await request(`${url}/alerts?token=${serviceToken()}`, {
    method: 'POST',
    headers: { cookie: `access_token=${serviceToken()}`, 'content-type': 'application/json' },
    body: JSON.stringify({ target: { all: true }, severity: 'info', title: 'x' })
  })
  t.equal(publish.status, 401, 'POST /alerts takes neither')
  client.send({ type: 'ping', id: 1 })
  t.same(await client.next('pong'), { type: 'pong', id: 1 }, 'the session is still open')
  const bearer = await request(`${url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })
  t.equal(bearer.status, 204, 'the Bearer header does')
  t.equal((await client.waitClosed()).code, 4403)
})

// Regression (unrevocable token): a token with `iat` in the future was never
// revoked by logout, which revokes tokens issued up to its second.
t.test('a token issued more than 30 s in the future is refused with 401', async (t) => {
  const { url, wsUrl } = await build(t)
  const sub = newUser()
  t.equal(await handshake(wsUrl, { token: userToken(sub, { iat: nowSec() + 3600 }) }), 401, 'an hour ahead')
  t.equal(await handshake(wsUrl, { token: userToken(sub, { iat: nowSec() + 40 }) }), 401, '40 s ahead')
  t.equal(await handshake(wsUrl, { token: userToken(sub, { iat: nowSec() + 5 }) }), 101, 'a small clock skew is tolerated')
  const publish = await request(`${url}/alerts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${serviceToken('svc', { iat: nowSec() + 3600 })}`, 'content-type': 'application/json' },
    body: JSON.stringify({ target: { all: true }, severity: 'info', title: 'x' })
  })
  t.equal(publish.status, 401, 'also on REST routes')
  const tolerant = await build(t, { env: { JWT_CLOCK_TOLERANCE_SECONDS: '120' } })
  t.equal(await handshake(tolerant.wsUrl, { token: userToken(newUser(), { iat: nowSec() + 90 }) }), 101, 'a larger JWT_CLOCK_TOLERANCE_SECONDS widens the skew')
  t.equal(await handshake(tolerant.wsUrl, { token: userToken(newUser(), { iat: nowSec() + 200 }) }), 401)
})

t.test('production warns at start while ALLOWED_ORIGINS is unset (browser-style tokens are accepted on /ws)', async (t) => {
  const production = { NODE_ENV: 'production', SINGLE_INSTANCE: 'true', TRUST_PROXY: '127.0.0.1' }
  const open = await build(t, { env: production, captureLogs: 'warn', listen: false })
  t.match(open.logs.join(''), /ALLOWED_ORIGINS is unset/)
  const guarded = await build(t, { env: { ...production, ALLOWED_ORIGINS: 'https://app.example.com' }, captureLogs: 'warn', listen: false })
  t.notMatch(guarded.logs.join(''), /ALLOWED_ORIGINS/)
  const development = await build(t, { captureLogs: 'warn', listen: false })
  t.notMatch(development.logs.join(''), /ALLOWED_ORIGINS/, 'not outside production')
})
