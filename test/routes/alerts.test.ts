import { createHash } from 'node:crypto'
import t, { type Test } from 'tap'
import { build } from '../helpers/build.js'
import { waitForStatus } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { nowSec, serviceToken, signJwt, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

interface Answer {
  status: number
  body: Record<string, unknown>
}

/** POSTs an alert; `body` is sent as is when it is a string. */
async function publish (url: string, body: unknown, token: string | null = serviceToken()): Promise<Answer> {
  const headers: Record<string, string> = { 'content-type': 'application/json' }
  if (token !== null) headers.authorization = `Bearer ${token}`
  const res = await fetch(`${url}/alerts`, {
    method: 'POST',
    headers,
    body: typeof body === 'string' ? body : JSON.stringify(body)
  })
  const text = await res.text()
  return { status: res.status, body: text === '' ? {} : JSON.parse(text) }
}

const alertTo = (target: object, extra: object = {}): object => ({ target, severity: 'warning', title: 'Disk almost full', ...extra })

async function connect (t: Test, wsUrl: string, userId: string): Promise<TestClient> {
  const { client, welcome } = await TestClient.connect(wsUrl, { token: userToken(userId) })
  t.teardown(() => client.close())
  t.equal(welcome.userId, userId, `${userId} connected`)
  return client
}

let barrierId = 0
/**
 * Waits until everything the server wrote to `client` before this call has
 * arrived: a ping is answered after every frame written before it.
 */
async function barrier (client: TestClient): Promise<void> {
  const id = `barrier-${++barrierId}`
  client.send({ type: 'ping', id })
  for (;;) {
    const pong = await client.next('pong')
    if (pong.id === id) return
  }
}

function alertsOf (client: TestClient, id?: unknown): Array<Record<string, unknown>> {
  return client.received.filter((m) => m.type === 'alert' && (id === undefined || m.id === id))
}

t.test('a service token publishes: 202 {id, delivered}', async (t) => {
  const gw = await build(t)
  const answer = await publish(gw.url, alertTo({ all: true }))
  t.equal(answer.status, 202)
  t.match(answer.body, { id: /^[0-9a-f-]{36}$/, delivered: 0 })
  t.same(Object.keys(answer.body).sort(), ['delivered', 'id', 'pos', 'stream'], 'nothing else in the answer')

  const array = await publish(gw.url, alertTo({ all: true }), serviceToken('svc', { scope: ['alerts:read', 'alerts:publish'] as unknown as string }))
  t.equal(array.status, 202, 'scope as an array claim')
  const spaced = await publish(gw.url, alertTo({ all: true }), serviceToken('svc', { scope: 'alerts:read alerts:publish' }))
  t.equal(spaced.status, 202, 'scope as a space-separated list')
  t.not(array.body.id, spaced.body.id, 'every alert gets its own id')
})

t.test('who may publish', async (t) => {
  const gw = await build(t)
  const noScope = await publish(gw.url, alertTo({ all: true }), userToken('alice'))
  t.equal(noScope.status, 403, 'a user token (no scope) -> 403')
  const otherScope = await publish(gw.url, alertTo({ all: true }), serviceToken('svc', { scope: 'alerts:read' }))
  t.equal(otherScope.status, 403, 'another scope -> 403')
  const prefixScope = await publish(gw.url, alertTo({ all: true }), serviceToken('svc', { scope: 'alerts:publisher' }))
  t.equal(prefixScope.status, 403, 'a scope that only starts like it -> 403')
  const arrayOther = await publish(gw.url, alertTo({ all: true }), serviceToken('svc', { scope: ['alerts:read'] as unknown as string }))
  t.equal(arrayOther.status, 403, 'an array without the scope -> 403')
  const none = await publish(gw.url, alertTo({ all: true }), null)
  t.equal(none.status, 401, 'no token -> 401')
  const garbage = await publish(gw.url, alertTo({ all: true }), 'not-a-jwt')
  t.equal(garbage.status, 401, 'a malformed token -> 401')
  const expired = await publish(gw.url, alertTo({ all: true }), serviceToken('svc', { exp: nowSec() - 60 }))
  t.equal(expired.status, 401, 'an expired service token -> 401')
  const forged = await publish(gw.url, alertTo({ all: true }), signJwt({ sub: 'svc', exp: nowSec() + 60, scope: 'alerts:publish' }, { key: 'another-secret-that-is-long-enough!!' }))
  t.equal(forged.status, 401, 'a token signed with another key -> 401')
  const unsigned = await publish(gw.url, alertTo({ all: true }), signJwt({ sub: 'svc', exp: nowSec() + 60, scope: 'alerts:publish' }, { alg: 'none' }))
  t.equal(unsigned.status, 401, 'alg none -> 401')
  t.equal(none.body.statusCode, 401)
  t.notMatch(JSON.stringify(noScope.body), /eyJ/, 'the answer does not echo the token')
})

t.test('a broadcast reaches every connected client exactly once', async (t) => {
  const gw = await build(t)
  const users = ['alice', 'bob', 'carol']
  const clients = await Promise.all(users.map((u) => connect(t, gw.wsUrl, u)))
  const answer = await publish(gw.url, alertTo({ all: true }, { severity: 'critical', body: 'Free some space', data: { host: 'db-1', usage: 0.97, tags: ['disk'] } }))
  t.equal(answer.status, 202)
  t.equal(answer.body.delivered, 3, 'delivered counts the sockets written')
  for (const [i, client] of clients.entries()) {
    const alert = await client.next('alert')
    t.match(alert, {
      type: 'alert',
      id: answer.body.id,
      ts: Number,
      severity: 'critical',
      title: 'Disk almost full',
      body: 'Free some space',
      data: { host: 'db-1', usage: 0.97, tags: ['disk'] }
    }, `${users[i]} received it`)
    t.ok(Math.abs((alert.ts as number) - Date.now()) < 60_000, 'ts is epoch milliseconds')
  }

  const second = await publish(gw.url, alertTo({ all: true }))
  for (const client of clients) {
    await barrier(client)
    t.equal(alertsOf(client, answer.body.id).length, 1, 'the first alert arrived once')
    t.equal(alertsOf(client, second.body.id).length, 1, 'the second alert arrived once')
    const only = alertsOf(client, second.body.id)[0]
    t.notOk('body' in only, 'no body when none was sent')
    t.notOk('data' in only, 'no data when none was sent')
  }
})

t.test('a per-user alert reaches only that user', async (t) => {
  const gw = await build(t, { env: { MAX_CONNECTIONS_PER_USER: '2' } })
  const alice = await connect(t, gw.wsUrl, 'alice')
  const bob1 = await connect(t, gw.wsUrl, 'bob')
  const bob2 = await connect(t, gw.wsUrl, 'bob')
  const answer = await publish(gw.url, alertTo({ userId: 'bob' }, { title: 'For bob' }))
  t.equal(answer.status, 202)
  t.equal(answer.body.delivered, 2, 'both of bob\'s sockets')
  for (const bob of [bob1, bob2]) {
    t.match(await bob.next('alert'), { id: answer.body.id, title: 'For bob' })
  }
  for (const client of [alice, bob1, bob2]) await barrier(client)
  t.same(alertsOf(alice), [], 'alice received nothing')
  t.equal(alertsOf(bob1).length, 1)
  t.equal(alertsOf(bob2).length, 1)

  const nobody = await publish(gw.url, alertTo({ userId: 'dave' }))
  t.equal(nobody.status, 202, 'a user without a socket is not an error')
  t.equal(nobody.body.delivered, 0)
})

t.test('invalid bodies -> 400, nothing delivered', async (t) => {
  const gw = await build(t)
  const alice = await connect(t, gw.wsUrl, 'alice')
  const valid = { target: { all: true }, severity: 'info', title: 'ok' }
  const cases: Array<[string, unknown]> = [
    ['missing target', { severity: 'info', title: 'x' }],
    ['missing severity', { target: { all: true }, title: 'x' }],
    ['missing title', { target: { all: true }, severity: 'info' }],
    ['empty target', { ...valid, target: {} }],
    ['all: false', { ...valid, target: { all: false } }],
    ['all: "true"', { ...valid, target: { all: 'true' } }],
    ['both all and userId', { ...valid, target: { all: true, userId: 'bob' } }],
    ['empty userId', { ...valid, target: { userId: '' } }],
    ['userId too long', { ...valid, target: { userId: 'u'.repeat(257) } }],
    ['userId a number', { ...valid, target: { userId: 42 } }],
    ['bad severity', { ...valid, severity: 'fatal' }],
    ['severity in capitals', { ...valid, severity: 'INFO' }],
    ['empty title', { ...valid, title: '' }],
    ['title too long', { ...valid, title: 't'.repeat(201) }],
    ['body too long', { ...valid, body: 'b'.repeat(4001) }],
    ['extra property', { ...valid, priority: 1 }],
    ['title a number', { ...valid, title: 42 }],
    ['title an object', { ...valid, title: { text: 'x' } }],
    ['body a number', { ...valid, body: 42 }],
    ['data an array', { ...valid, data: ['x'] }],
    ['data a string', { ...valid, data: 'x' }],
    ['data with too many keys', { ...valid, data: Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`k${i}`, i])) }],
    ['data key too long', { ...valid, data: { ['k'.repeat(129)]: 1 } }],
    ['null', 'null'],
    ['a string', '"alert"'],
    ['an array', '[]'],
    ['not JSON', '{"target":'],
    ['__proto__ key', '{"target":{"all":true},"severity":"info","title":"x","__proto__":{"admin":true}}'],
    ['nested __proto__ key', '{"target":{"all":true},"severity":"info","title":"x","data":{"__proto__":{"admin":true}}}']
  ]
  for (const [name, body] of cases) {
    const answer = await publish(gw.url, body)
    t.equal(answer.status, 400, `${name} -> 400`)
  }
  const tooLarge = await publish(gw.url, { ...valid, data: { blob: 'x'.repeat(70 * 1024) } })
  t.equal(tooLarge.status, 413, 'a body over the limit -> 413')
  for (const [type, status] of [['text/plain', 400], ['application/xml', 415]] as const) {
    const res = await fetch(`${gw.url}/alerts`, {
      method: 'POST',
      headers: { authorization: `Bearer ${serviceToken()}`, 'content-type': type },
      body: 'alert!'
    })
    t.equal(res.status, status, `${type} -> ${status}`)
  }
  await barrier(alice)
  t.same(alertsOf(alice), [], 'no refused alert reached a client')
  t.equal(({} as Record<string, unknown>).admin, undefined, 'no prototype was polluted')
})

t.test('text fields are sanitised, as the receiving client sees them', async (t) => {
  const gw = await build(t)
  const alice = await connect(t, gw.wsUrl, 'alice')
  const answer = await publish(gw.url, alertTo({ all: true }, {
    title: '\u0007Disk\u0000 \u202efull\u202c\u2066!\u2069\u009b\nnow\t\u007f',
    body: 'line one\nline two\tcolumn\r\n\u001b[31mred\u0085\u202e'
  }))
  t.equal(answer.status, 202)
  const alert = await alice.next('alert')
  t.equal(alert.title, 'Disk full!now', 'control and bidi characters stripped from the title, newline and tab too')
  t.equal(alert.body, 'line one\nline two\tcolumn\n[31mred', 'the body keeps newline and tab only')

  const nfc = await publish(gw.url, alertTo({ all: true }, { title: 'Cafe\u0301', body: 'A\u030a' }))
  t.equal(nfc.status, 202)
  const composed = await alice.next('alert')
  t.equal(composed.title, 'Caf\u00e9', 'title NFC')
  t.equal(composed.body, '\u00c5', 'body NFC')

  // Lengths are bounded after sanitising: 200 visible characters and some controls pass.
  const padded = await publish(gw.url, alertTo({ all: true }, { title: 't'.repeat(200) + '\u0000'.repeat(20) }))
  t.equal(padded.status, 202, 'the bound applies to the sanitised title')
  t.equal((await alice.next('alert')).title, 't'.repeat(200))
  const decomposed = await publish(gw.url, alertTo({ all: true }, { title: 'e\u0301'.repeat(150) }))
  t.equal(decomposed.status, 202, '300 code units that compose to 150 characters')

  const onlyControls = await publish(gw.url, alertTo({ all: true }, { title: '\u0000\u0001\n\t\u202e\u009f' }))
  t.equal(onlyControls.status, 400, 'a title made only of control characters -> 400')
  await barrier(alice)
  t.equal(alertsOf(alice).length, 4, 'each accepted alert arrived once, the refused one never')
})

t.test('with Redis: other instances deliver through the bus; delivered counts them', async (t) => {
  const redis = await RedisServer.start(t)
  const prefix = `alerts-test-${process.pid}-${Date.now()}:`
  const a = await build(t, { env: { REDIS_URL: redis.url }, redisPrefix: prefix })
  const b = await build(t, { env: { REDIS_URL: redis.url }, redisPrefix: prefix })
  await Promise.all([waitForStatus(`${a.url}/ready`, 200), waitForStatus(`${b.url}/ready`, 200)])
  const alice = await connect(t, a.wsUrl, 'alice')
  const bob = await connect(t, b.wsUrl, 'bob')

  const broadcast = await publish(a.url, alertTo({ all: true }, { title: 'Everyone' }))
  t.equal(broadcast.status, 202)
  // The other instance's count is its last report (every few seconds).
  t.ok(Number(broadcast.body.delivered) >= 1, 'alice here, bob as last reported by the other instance')
  t.match(await alice.next('alert'), { id: broadcast.body.id })
  t.match(await bob.next('alert'), { id: broadcast.body.id }, 'bob gets it through the bus')

  const forBob = await publish(a.url, alertTo({ userId: 'bob' }, { title: 'Only bob' }))
  t.equal(forBob.status, 202)
  t.equal(forBob.body.delivered, 1, 'bob is on the other instance: counted cluster-wide')
  t.match(await bob.next('alert'), { id: forBob.body.id, title: 'Only bob' })

  // A broadcast from b reaches a on the same subscription after a's own
  // echo of the first one: once alice has it, any duplicate would be there.
  const fromB = await publish(b.url, alertTo({ all: true }, { title: 'From b' }))
  t.ok(Number(fromB.body.delivered) >= 1)
  t.match(await alice.next('alert'), { id: fromB.body.id })
  await Promise.all([barrier(alice), barrier(bob)])
  t.same(alertsOf(alice).map((m) => m.id), [broadcast.body.id, fromB.body.id], 'alice: each alert once, nothing for bob')
  t.same(alertsOf(bob).map((m) => m.id), [broadcast.body.id, forBob.body.id, fromB.body.id], 'bob: each alert once')

  await redis.stop()
  await waitForStatus(`${a.url}/ready`, 503)
  const down = await publish(a.url, alertTo({ all: true }, { title: 'During the outage' }))
  t.equal(down.status, 503, 'the bus is unreachable -> 503')
  const downUser = await publish(a.url, alertTo({ userId: 'alice' }))
  t.equal(downUser.status, 503, 'per-user alerts too')
  await barrier(alice)
  t.same(alertsOf(alice).map((m) => m.id), [broadcast.body.id, fromB.body.id], 'a 503 delivered nothing: a retry cannot deliver twice')
  t.notMatch(JSON.stringify(down.body), /ECONNREFUSED|Stream|ioredis/i, 'no internal detail in the answer')
})

t.test('REST_RATE_LIMIT_PER_MINUTE: 429 per client address for logouts and requests refused for their token', async (t) => {
  const { url } = await build(t, { env: { REST_RATE_LIMIT_PER_MINUTE: '3' } })
  t.equal((await publish(url, alertTo({ all: true }), null)).status, 401, 'no token: refused, and counted')
  const logout = await fetch(`${url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${userToken('rest-limit')}` } })
  t.equal(logout.status, 204, 'logout counts on the address too')
  for (let i = 0; i < 5; i++) t.equal((await publish(url, alertTo({ all: true }))).status, 202, `valid publish ${i + 1} is not counted by address`)
  t.equal((await publish(url, alertTo({ all: true }), 'garbage')).status, 401, 'a bad token: refused, and counted (the third)')
  const limited = await fetch(`${url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${userToken('rest-limit-2')}` } })
  t.equal(limited.status, 429, 'the fourth counted request this minute')
  t.ok(Number(limited.headers.get('retry-after')) > 0, 'with Retry-After')
  t.equal((await publish(url, alertTo({ all: true }), 'garbage')).status, 429, 'a bad token over the limit gets 429, not 401')
  t.equal((await publish(url, '{not json', 'garbage')).status, 429, 'a limited client\'s body is not read')
  t.equal((await publish(url, alertTo({ all: true }))).status, 202, 'a valid publisher from the same address is limited by its identity only')
})

// Regression: a backend publishing from one address got 429 after
// REST_RATE_LIMIT_PER_MINUTE requests, although its token was valid.
t.test('PUBLISH_RATE_LIMIT_PER_MINUTE: publishers are limited by token sub, not by address', async (t) => {
  const { url } = await build(t, { env: { REST_RATE_LIMIT_PER_MINUTE: '2', PUBLISH_RATE_LIMIT_PER_MINUTE: '4' } })
  for (let i = 0; i < 4; i++) t.equal((await publish(url, alertTo({ all: true }), serviceToken('svc-a'))).status, 202, `svc-a publish ${i + 1}`)
  const limited = await fetch(`${url}/alerts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${serviceToken('svc-a')}`, 'content-type': 'application/json' },
    body: '{not json'
  })
  t.equal(limited.status, 429, 'the fifth publish of svc-a this minute, before its body is read')
  t.ok(Number(limited.headers.get('retry-after')) > 0, 'with Retry-After')
  for (let i = 0; i < 4; i++) t.equal((await publish(url, alertTo({ all: true }), serviceToken('svc-b'))).status, 202, `svc-b, same address, publish ${i + 1}`)
})

t.test('a publish or logout whose bus step fails after authentication answers 503', async (t) => {
  const gw = await build(t)
  gw.app.cluster.broker.publish = async () => { throw new Error('bus gone') }
  const history = gw.app.cluster.history as NonNullable<typeof gw.app.cluster.history>
  history.append = async () => { throw new Error('bus gone') }
  gw.app.cluster.revocations.revoke = async () => { throw new Error('bus gone') }
  t.equal((await publish(gw.url, alertTo({ all: true }))).status, 503, 'broadcast')
  t.equal((await publish(gw.url, alertTo({ userId: 'nobody' }))).status, 503, 'per-user')
  const logout = await fetch(`${gw.url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${userToken('bus-gone')}` } })
  t.equal(logout.status, 503, 'a logout that cannot be stored is refused')
})

// Regression: the fingerprint hashed the body in the order it came, so a
// client that sent the same alert again with its keys in another order (a
// retry re-serialised by another library) was answered 422.
t.test('Idempotency-Key: the same body with its keys in another order is a repeat', async (t) => {
  const gw = await build(t)
  const post = async (body: string, key = 'order-1'): Promise<Response> => await fetch(`${gw.url}/alerts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${serviceToken()}`, 'content-type': 'application/json', 'idempotency-key': key },
    body
  })
  const first = await post('{"target":{"userId":"nobody"},"severity":"info","title":"t","data":{"a":1,"b":{"c":2,"d":3}}}')
  t.equal(first.status, 202)
  const again = await post('{"data":{"b":{"d":3,"c":2},"a":1},"title":"t","severity":"info","target":{"userId":"nobody"}}')
  t.equal(again.status, 202)
  t.equal(again.headers.get('idempotent-replayed'), 'true')
  t.same(await again.json(), await first.json(), 'the first answer')
  t.equal((await post('{"target":{"userId":"nobody"},"severity":"info","title":"t","data":{"a":1,"b":{"c":2,"d":4}}}')).status, 422, 'another body is still a conflict')

  // A key taken by an instance of the earlier version (its fingerprint
  // hashed the body as it came): a retry through this one is a repeat.
  const body = '{"target":{"userId":"nobody"},"severity":"info","title":"older"}'
  await gw.app.cluster.idempotency.complete('svc', 'order-2', createHash('sha256').update(body).digest('base64'), '{"id":"from-before","delivered":0}')
  const retry = await post(body, 'order-2')
  t.equal(retry.status, 202)
  t.same(await retry.json(), { id: 'from-before', delivered: 0 })
})

t.test('an idempotency answer that cannot be stored after the publish: still 202, logged', async (t) => {
  const gw = await build(t, { captureLogs: 'warn' })
  gw.app.cluster.idempotency.complete = async () => { throw new Error('bus gone') }
  const res = await fetch(`${gw.url}/alerts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${serviceToken()}`, 'content-type': 'application/json', 'idempotency-key': 'k-1' },
    body: JSON.stringify(alertTo({ all: true }))
  })
  t.equal(res.status, 202, 'the alert is published: its answer stands')
  const { id } = await res.json() as { id: string }
  t.ok(gw.logs.some((line) => line.includes('idempotency answer not stored') && line.includes(id)), 'the lost answer is logged with the alert id')
})

// Regression: with the revocation read beside the publisher's count, a
// revoked token used up the service's publish budget, and the address limit
// (one @fastify/rate-limit limiter per request) no longer counted it.
t.test('a revoked publisher token counts on its address, never against the service\'s publish limit', async (t) => {
  const gw = await build(t, { env: { REST_RATE_LIMIT_PER_MINUTE: '2', PUBLISH_RATE_LIMIT_PER_MINUTE: '3' } })
  await gw.app.cluster.revocations.revoke('svc-r', nowSec() - 2, 3600)
  const revoked = serviceToken('svc-r', { iat: nowSec() - 5 })
  for (let i = 0; i < 2; i++) {
    const res = await publish(gw.url, alertTo({ userId: 'nobody' }), revoked)
    t.equal(res.status, 403, `revoked token, try ${i + 1}: refused`)
    t.equal(res.body.code, 'WS_TOKEN_REVOKED')
  }
  t.equal((await publish(gw.url, alertTo({ userId: 'nobody' }), revoked)).status, 429, 'the third refusal from this address this minute: 429')
  const renewed = serviceToken('svc-r')
  for (let i = 0; i < 3; i++) t.equal((await publish(gw.url, alertTo({ userId: 'nobody' }), renewed)).status, 202, `the service's new token, publish ${i + 1} of its 3`)
  t.equal((await publish(gw.url, alertTo({ userId: 'nobody' }), renewed)).status, 429, 'its fourth: the publish limit, which the revoked token did not touch')
})

t.test('POST /alerts answers with an API\'s security headers: a CSP that allows nothing, nosniff', async (t) => {
  const gw = await build(t)
  for (const token of [serviceToken(), null]) {
    const res = await fetch(`${gw.url}/alerts`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(token === null ? {} : { authorization: `Bearer ${token}` }) },
      body: JSON.stringify(alertTo({ userId: 'nobody' }))
    })
    t.equal(res.status, token === null ? 401 : 202)
    t.equal(res.headers.get('content-security-policy'), "default-src 'none';frame-ancestors 'none'", 'no page policy on a JSON answer')
    t.equal(res.headers.get('x-content-type-options'), 'nosniff')
    t.equal(res.headers.get('x-frame-options'), 'SAMEORIGIN')
  }
})
