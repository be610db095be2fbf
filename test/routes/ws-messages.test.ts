import type { Socket } from 'node:net'
import t from 'tap'
import { build } from '../helpers/build.js'
import { TestClient } from '../helpers/ws-client.js'

// Real sockets and several app instances: keep clear of the default 30 s on a busy machine.
t.setTimeout(60_000)

const MAX_BYTES = 10240

/**
 * A JSON text message of an unknown type, exactly `bytes` bytes of UTF-8,
 * padded with `char` (topped up with ASCII when the sizes do not divide).
 */
function paddedMessage (bytes: number, char = 'a'): string {
  const padBytes = bytes - Buffer.byteLength('{"type":"padding","pad":""}')
  const charBytes = Buffer.byteLength(char)
  const pad = char.repeat(Math.floor(padBytes / charBytes)) + 'a'.repeat(padBytes % charBytes)
  const message = `{"type":"padding","pad":"${pad}"}`
  if (Buffer.byteLength(message) !== bytes) throw new Error('padding arithmetic is wrong')
  return message
}

/**
 * Sends several frames in one TCP write, so the server reads them in one
 * chunk and handles them in one go, before any promise settles.
 */
function sendTogether (client: TestClient, frames: Array<[string | Buffer, boolean]>): void {
  const socket = (client.ws as unknown as { _socket: Socket })._socket
  socket.cork()
  for (const [data, binary] of frames) client.ws.send(data, { binary })
  socket.uncork()
}

t.test('ping is answered by pong, with and without an id; ack is accepted silently', async (t) => {
  const { wsUrl } = await build(t)
  const client = await TestClient.connectAs(wsUrl)

  client.send({ type: 'ping' })
  t.same(await client.next(), { type: 'pong' }, 'no id: no id in the pong')
  client.send({ type: 'ping', id: 'abc-1' })
  t.same(await client.next(), { type: 'pong', id: 'abc-1' }, 'string id echoed')
  client.send({ type: 'ping', id: 42 })
  t.same(await client.next(), { type: 'pong', id: 42 }, 'integer id echoed')
  client.send({ type: 'ping', id: 'x'.repeat(128) })
  t.same(await client.next(), { type: 'pong', id: 'x'.repeat(128) }, 'a 128-character id is the longest accepted')

  client.send({ type: 'ack', alertId: 'alert-1' })
  client.send({ type: 'ping', id: 'after-ack' })
  t.same(await client.next(), { type: 'pong', id: 'after-ack' }, 'the ack got no reply: the next message is the pong')
  await client.close()
})

t.test('malformed, unknown and invalid messages get an error reply with a code', async (t) => {
  const { wsUrl } = await build(t)
  const client = await TestClient.connectAs(wsUrl)
  const cases: Array<[string, string, string]> = [
    ['not JSON', '{"type":"ping"', 'invalid_json'],
    ['empty text', '', 'invalid_json'],
    ['__proto__ key', '{"type":"ping","__proto__":{"isAdmin":true}}', 'invalid_json'],
    ['nested __proto__ key', '{"type":"ack","alertId":"a","x":{"__proto__":{"polluted":true}}}', 'invalid_json'],
    ['constructor.prototype', '{"type":"ping","constructor":{"prototype":{"polluted":true}}}', 'invalid_json'],
    ['unknown type', '{"type":"subscribe","topic":"all"}', 'unknown_type'],
    ['no type', '{"id":1}', 'unknown_type'],
    ['numeric type', '{"type":7}', 'unknown_type'],
    ['JSON null', 'null', 'unknown_type'],
    ['JSON array', '[{"type":"ping"}]', 'unknown_type'],
    ['JSON string', '"ping"', 'unknown_type']
  ]
  for (const [name, text, code] of cases.slice(0, 8)) {
    client.send(text)
    t.match(await client.next(), { type: 'error', code, message: String }, name)
  }
  await client.close()

  // A fresh socket: the malformed allowance is per socket and 10 a minute.
  const second = await TestClient.connectAs(wsUrl)
  for (const [name, text, code] of cases.slice(8)) {
    second.send(text)
    t.match(await second.next(), { type: 'error', code, message: String }, name)
  }
  const invalid: Array<[string, unknown]> = [
    ['ping with a 129-character id', { type: 'ping', id: 'x'.repeat(129) }],
    ['ping with an empty id', { type: 'ping', id: '' }],
    ['ping with a fractional id', { type: 'ping', id: 1.5 }],
    ['ping with an extra property', { type: 'ping', extra: true }],
    ['ack without alertId', { type: 'ack' }],
    ['auth without token', { type: 'auth' }],
    ['auth with an empty token', { type: 'auth', token: '' }]
  ]
  for (const [name, message] of invalid) {
    second.send(message)
    t.match(await second.next(), { type: 'error', code: 'invalid_message', message: /^invalid (ping|ack|auth) message$/ }, name)
  }
  second.send({ type: 'ping', id: 'still-open' })
  t.same(await second.next(), { type: 'pong', id: 'still-open' }, 'ten rejected messages: still open')
  await second.close()
})

// Regressions: a ping id over 2^53 was answered with another number (JSON
// numbers are doubles); the message rate was counted on the wall clock, so
// a clock stepped back (NTP) drained the bucket and closed an idle client
// with 1008.
t.test('ping ids are echoed as sent: integers beyond 2^53 are refused', async (t) => {
  const { wsUrl } = await build(t)
  const client = await TestClient.connectAs(wsUrl)
  client.send('{"type":"ping","id":9007199254740993}')
  t.match(await client.next(), { type: 'error', code: 'invalid_message' })
  client.send('{"type":"ping","id":-9007199254740991}')
  t.same(await client.next(), { type: 'pong', id: -9007199254740991 }, 'the safe integers are echoed')
  await client.close()
})

t.test('a step back of the wall clock neither closes a client nor counts against its rate', async (t) => {
  const { wsUrl } = await build(t, { env: { MESSAGE_RATE_PER_SECOND: '2', MESSAGE_BURST: '4' } })
  const client = await TestClient.connectAs(wsUrl)
  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  const stepped = realNow() - 3000
  const started = realNow()
  Date.now = () => stepped + (realNow() - started)
  sendTogether(client, [1, 2, 3, 4].map((id) => [JSON.stringify({ type: 'ping', id }), false]))
  for (const id of [1, 2, 3, 4]) t.same(await client.next(), { type: 'pong', id }, `ping ${id} of the burst answered`)
  Date.now = realNow
  await client.close()
})

t.test('the 11th malformed message within a minute closes with 1008', async (t) => {
  const { wsUrl } = await build(t)
  const client = await TestClient.connectAs(wsUrl)
  for (let i = 1; i <= 10; i++) {
    client.send(`not json ${i}`)
    t.match(await client.next(), { type: 'error', code: 'invalid_json' }, `malformed #${i} answered`)
  }
  client.send({ type: 'ping', id: 'ten' })
  t.same(await client.next(), { type: 'pong', id: 'ten' }, 'open after 10 malformed messages; valid ones do not count')
  client.send({ type: 'nope' })
  t.match(await client.next(), { type: 'error', code: 'unknown_type' }, 'the 11th is answered too')
  t.equal((await client.waitClosed()).code, 1008)
})

t.test('the malformed allowance is per minute: a minute later the count starts over', async (t) => {
  const { wsUrl } = await build(t)
  const client = await TestClient.connectAs(wsUrl)
  for (let i = 1; i <= 10; i++) {
    client.send(`early ${i}`)
    await client.next('error')
  }
  // Move the gateway's monotonic clock (its window's) a minute on.
  const realNow = performance.now.bind(performance)
  t.teardown(() => { performance.now = realNow })
  performance.now = () => realNow() + 60_000
  for (let i = 1; i <= 10; i++) {
    client.send(`late ${i}`)
    await client.next('error')
  }
  t.same(await client.pingPong('open'), { type: 'pong', id: 'open' }, '20 malformed messages, but only 10 within the last minute')
  client.send('one too many')
  t.equal((await client.waitClosed()).code, 1008)
  performance.now = realNow
})

t.test('MAX_MALFORMED_PER_MINUTE sets the allowance', async (t) => {
  const { wsUrl } = await build(t, { env: { MAX_MALFORMED_PER_MINUTE: '2' } })
  const client = await TestClient.connectAs(wsUrl)
  client.send('x')
  client.send({ type: 'ping', bad: 1 })
  client.send({ type: 'ping', id: 'open' })
  t.same(await client.next('pong'), { type: 'pong', id: 'open' })
  client.send('[]')
  t.equal((await client.waitClosed()).code, 1008)
  t.equal(client.received.filter((m) => m.type === 'error').length, 3)
})

t.test('a binary frame closes with 1003', async (t) => {
  const { wsUrl } = await build(t)
  const client = await TestClient.connectAs(wsUrl)
  client.ws.send(Buffer.from(JSON.stringify({ type: 'ping' })), { binary: true })
  t.equal((await client.waitClosed()).code, 1003)
  t.notOk(client.received.some((m) => m.type === 'pong'), 'the binary frame was not handled as a message')
})

t.test('frames that follow the one that closed the socket are ignored', async (t) => {
  const { wsUrl } = await build(t)
  const client = await TestClient.connectAs(wsUrl)
  sendTogether(client, [[Buffer.from('x'), true], [JSON.stringify({ type: 'ping', id: 'late' }), false]])
  t.equal((await client.waitClosed()).code, 1003)
  t.same(client.received.filter((m) => m.type !== 'welcome'), [], 'no pong for the frame after the binary one')
})

t.test(`a ${MAX_BYTES}-byte message is accepted, ${MAX_BYTES + 1} bytes close with 1009`, async (t) => {
  const { wsUrl } = await build(t)

  const atLimit = await TestClient.connectAs(wsUrl)
  atLimit.send(paddedMessage(MAX_BYTES))
  t.match(await atLimit.next(), { type: 'error', code: 'unknown_type' }, `${MAX_BYTES} bytes: an error reply, not a close`)
  atLimit.send(paddedMessage(MAX_BYTES, 'é'))
  t.match(await atLimit.next(), { type: 'error', code: 'unknown_type' }, `${MAX_BYTES} bytes of 2-byte characters: an error reply`)
  atLimit.send({ type: 'ping', id: 'open' })
  t.same(await atLimit.next(), { type: 'pong', id: 'open' })
  await atLimit.close()

  const over = await TestClient.connectAs(wsUrl)
  over.send(paddedMessage(MAX_BYTES + 1))
  t.equal((await over.waitClosed()).code, 1009, `${MAX_BYTES + 1} bytes`)

  // 5,134 characters but 10,241 bytes: the limit counts bytes.
  const multiByte = await TestClient.connectAs(wsUrl)
  const text = paddedMessage(MAX_BYTES + 1, 'é')
  t.ok(text.length < MAX_BYTES, 'fewer characters than the limit')
  multiByte.send(text)
  t.equal((await multiByte.waitClosed()).code, 1009, `${MAX_BYTES + 1} bytes of 2-byte characters`)

  const emoji = await TestClient.connectAs(wsUrl)
  emoji.send(paddedMessage(MAX_BYTES + 1, '😀'))
  t.equal((await emoji.waitClosed()).code, 1009, '4-byte characters over the limit')

  const binaryOver = await TestClient.connectAs(wsUrl)
  binaryOver.ws.send(Buffer.alloc(MAX_BYTES + 1), { binary: true })
  t.equal((await binaryOver.waitClosed()).code, 1009, 'an oversized binary frame is 1009 (the size is checked first)')
})

t.test('WS_MAX_MESSAGE_BYTES sets the limit', async (t) => {
  const { app, wsUrl } = await build(t, { env: { WS_MAX_MESSAGE_BYTES: '100' } })
  const client = await TestClient.connectAs(wsUrl)
  client.send(paddedMessage(100))
  t.match(await client.next(), { type: 'error', code: 'unknown_type' })
  client.send(paddedMessage(101))
  t.equal((await client.waitClosed()).code, 1009)
  const metrics = (await app.inject('/metrics')).body
  t.match(metrics, /^ws_messages_rejected_total\{reason="too_big"\} 1$/m, 'counted as too_big')
})

t.test('more messages than the burst allows close with 1008', async (t) => {
  const { wsUrl } = await build(t, { env: { MESSAGE_RATE_PER_SECOND: '2', MESSAGE_BURST: '4' } })

  const burst = await TestClient.connectAs(wsUrl)
  sendTogether(burst, [1, 2, 3, 4, 5, 6].map((id) => [JSON.stringify({ type: 'ping', id }), false]))
  t.equal((await burst.waitClosed()).code, 1008, 'six at once with a burst of four')
  t.same(burst.received.filter((m) => m.type === 'pong').map((m) => m.id), [1, 2, 3, 4], 'the burst was answered, the rest was not')

  const within = await TestClient.connectAs(wsUrl)
  sendTogether(within, [1, 2, 3, 4].map((id) => [JSON.stringify({ type: 'ping', id }), false]))
  for (const id of [1, 2, 3, 4]) t.same(await within.next(), { type: 'pong', id }, `burst message ${id} answered`)
  t.equal(within.ws.readyState, within.ws.OPEN, 'exactly the burst: still open')
  await within.close()

  // Malformed messages count against the rate too.
  const malformed = await TestClient.connectAs(wsUrl)
  sendTogether(malformed, ['a', 'b', 'c', 'd', 'e'].map((text) => [text, false]))
  t.equal((await malformed.waitClosed()).code, 1008)
  t.equal(malformed.received.filter((m) => m.type === 'error').length, 4)
})

t.test('the message rate refills over time', async (t) => {
  const { wsUrl } = await build(t, { env: { MESSAGE_RATE_PER_SECOND: '20', MESSAGE_BURST: '2', HEARTBEAT_INTERVAL_MS: '100' } })
  const client = await TestClient.connectAs(wsUrl)
  sendTogether(client, [0, 1].map((id) => [JSON.stringify({ type: 'ping', id }), false]))
  t.same(await client.next(), { type: 'pong', id: 0 })
  t.same(await client.next(), { type: 'pong', id: 1 })
  // The bucket is empty. Two heartbeat pings to this socket are one interval
  // (100 ms) apart: proof that at least two tokens (50 ms each) came back.
  await new Promise<void>((resolve) => {
    let pings = 0
    client.ws.on('ping', () => { if (++pings === 2) resolve() })
  })
  sendTogether(client, [2, 3].map((id) => [JSON.stringify({ type: 'ping', id }), false]))
  t.same(await client.next(), { type: 'pong', id: 2 }, 'refilled')
  t.same(await client.next(), { type: 'pong', id: 3 }, 'refilled')
  await client.close()
})
