import t from 'tap'
import { build, type Built } from '../helpers/build.js'
import { serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

/** POSTs an alert whose `data` is the raw JSON text `data`; answers status and body. */
async function publishData (gw: Built, data: string, target = '{"all":true}'): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await gw.app.inject({
    method: 'POST',
    url: '/alerts',
    headers: { authorization: `Bearer ${serviceToken()}`, 'content-type': 'application/json' },
    payload: `{"target":${target},"severity":"info","title":"nested","data":${data}}`
  })
  return { status: res.statusCode, body: res.json() }
}

/** `data` nested `levels` deep in objects: `data` itself is level 1. */
const nestedObjects = (levels: number): string => '{"a":'.repeat(levels - 1) + '{"a":1}' + '}'.repeat(levels - 1)
/** `data` with arrays nested inside it, `levels` deep in all. */
const nestedArrays = (levels: number): string => `{"a":${'['.repeat(levels - 1)}1${']'.repeat(levels - 1)}}`

t.test('arrays nested thousands deep in target.userIds answer 400, not 500 (stack overflow in the error report)', async (t) => {
  const gw = await build(t, { listen: false })
  // The check fails at once (not strings); TypeBox's list of errors then
  // hashes every item for uniqueItems, recursively.
  const deep = '['.repeat(15000) + '"x"' + ']'.repeat(15000)
  const answer = await publishData(gw, '{}', `{"userIds":[${deep},${deep}]}`)
  t.equal(answer.status, 400)
  t.match(answer.body, { code: 'FST_ERR_VALIDATION', message: 'body must not be nested this deeply' })
  t.notMatch(JSON.stringify(answer.body), /call stack/, "V8's message is not sent")
  t.equal((await publishData(gw, '{}', '{"userIds":[["x"],["x"]]}')).status, 400, 'shallow arrays in userIds are refused as before')
  t.equal((await publishData(gw, '{}', '{"userIds":["a","b"]}')).status, 202)
})

t.test('deeply nested data answers 400, not 500 (stack overflow in JSON.stringify)', async (t) => {
  const gw = await build(t, { listen: false })
  const deepest = nestedObjects(8000)
  t.ok(Buffer.byteLength(deepest) < 64 * 1024, 'the body fits the body limit')
  for (const [name, data] of [
    ['8,000 levels of objects', deepest],
    ['8,000 levels of arrays', nestedArrays(8000)],
    ['17 levels of objects', nestedObjects(17)],
    ['17 levels of arrays', nestedArrays(17)],
    ['17 levels, the deep branch after a shallow one', `{"b":{"c":1},"a":${nestedObjects(16)}}`]
  ]) {
    const answer = await publishData(gw, data)
    t.equal(answer.status, 400, `${name} -> 400`)
    t.match(answer.body, { code: 'FST_ERR_VALIDATION', message: 'body/data must not be nested more than 16 levels deep' }, `${name}: a validation error`)
  }
  t.equal((await publishData(gw, nestedObjects(16))).status, 202, '16 levels of objects are accepted')
  t.equal((await publishData(gw, nestedArrays(16))).status, 202, '16 levels of arrays are accepted')
  t.equal((await publishData(gw, '{"a":[{"b":[1,"x",null,true]}]}')).status, 202, 'objects in arrays and scalars in arrays are accepted')
})

t.test('16 levels of data reach the user as sent', async (t) => {
  const gw = await build(t)
  const { client } = await TestClient.connect(gw.wsUrl, { token: userToken('alice') })
  t.teardown(() => client.close())
  const data = nestedObjects(16)
  t.equal((await publishData(gw, data, '{"userId":"alice"}')).status, 202)
  const alert = await client.next('alert')
  t.same(alert.data, JSON.parse(data))
})

t.test('data keys and values are sanitised (NUL, ESC, U+202E passed through)', async (t) => {
  const gw = await build(t)
  const { client } = await TestClient.connect(gw.wsUrl, { token: userToken('alice') })
  t.teardown(() => client.close())
  const data = {
    'host\u0000': 'db\u001b[31m-1\u202e',
    'n\u202e': 3,
    nested: { 'k\u0085ey': ['a\u0000b', { 'c\u2066': 'Cafe\u0301\n\t' }, null, false] },
    '__proto\u0000__': { polluted: 'x\u0000' }
  }
  const answer = await publishData(gw, JSON.stringify(data), '{"userId":"alice"}')
  t.equal(answer.status, 202)
  const alert = await client.next('alert')
  t.same(alert.data, JSON.parse('{"host":"db[31m-1","n":3,"nested":{"key":["ab",{"c":"Caf\u00e9"},null,false]},"__proto__":{"polluted":"x"}}'),
    'control and bidi characters are stripped from keys and values at every level, newline and tab included; NFC')
  const sent = alert.data as Record<string, unknown>
  t.same(Object.getOwnPropertyDescriptor(sent, '__proto__')?.value, { polluted: 'x' }, 'a key that sanitises to __proto__ is sent as a plain key, not lost to a prototype')
})

t.test('data keys are bounded after sanitising', async (t) => {
  const gw = await build(t, { listen: false })
  const key = 'k'.repeat(128)
  t.equal((await publishData(gw, JSON.stringify({ [`${key}\u0000\u202e`]: 1 }))).status, 202, 'a key within the bound once its control characters are stripped')
  t.equal((await publishData(gw, JSON.stringify({ [`${key}k`]: 1 }))).status, 400, 'a longer key -> 400')
})
