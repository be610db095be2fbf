import t from 'tap'
import { canonicalJson } from '../../../src/lib/canonical-json.js'

t.test('the same value gives the same text whatever its key order', async (t) => {
  const a = { title: 'x', target: { userIds: ['b', 'a'] }, data: { z: [{ b: 1, a: null }], a: 'q"\u2028' } }
  const b = { data: { a: 'q"\u2028', z: [{ a: null, b: 1 }] }, target: { userIds: ['b', 'a'] }, title: 'x' }
  t.equal(canonicalJson(a), canonicalJson(b))
  t.equal(canonicalJson(a), '{"data":{"a":"q\\"\u2028","z":[{"a":null,"b":1}]},"target":{"userIds":["b","a"]},"title":"x"}')
  t.same(JSON.parse(canonicalJson(a)), a, 'it is the JSON of the value')
  t.not(canonicalJson({ ids: ['a', 'b'] }), canonicalJson({ ids: ['b', 'a'] }), 'array order counts')
})

t.test('undefined properties are left out, as JSON.stringify does; scalars as JSON', async (t) => {
  t.equal(canonicalJson({ a: 1, b: undefined }), '{"a":1}')
  t.equal(canonicalJson({}), '{}')
  t.equal(canonicalJson([]), '[]')
  t.equal(canonicalJson('s'), '"s"')
  t.equal(canonicalJson(1.5), '1.5')
  t.equal(canonicalJson(true), 'true')
  t.equal(canonicalJson(null), 'null')
})
