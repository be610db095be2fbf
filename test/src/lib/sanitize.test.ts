import t from 'tap'
import { sanitiseAlertBody, sanitiseLine, sanitiseText } from '../../../src/lib/sanitize.js'

const C0 = Array.from({ length: 0x20 }, (_, i) => String.fromCharCode(i)).join('')
const C1 = Array.from({ length: 0x20 }, (_, i) => String.fromCharCode(0x80 + i)).join('')
const DEL = '\u007f'
// LRE, RLE, PDF, LRO, RLO and LRI, RLI, FSI, PDI.
const BIDI = '\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069'

t.test('sanitiseLine', async (t) => {
  t.equal(sanitiseLine('Disk almost full'), 'Disk almost full', 'plain text is unchanged')
  t.equal(sanitiseLine(`a${C0}b`), 'ab', 'every C0 control character is stripped, newline and tab included')
  t.equal(sanitiseLine(`a${DEL}b`), 'ab', 'DEL is stripped')
  t.equal(sanitiseLine(`a${C1}b`), 'ab', 'every C1 control character is stripped')
  t.equal(sanitiseLine(`a${BIDI}b`), 'ab', 'bidi embedding, override and isolate characters are stripped')
  t.equal(sanitiseLine('line one\nline two\ttab\r'), 'line oneline twotab')
  // The CVE-2021-42574 shape: text that reads differently than it is.
  t.equal(sanitiseLine('access \u202eNIMDA\u202c granted'), 'access NIMDA granted')
  t.equal(sanitiseLine('Cafe\u0301'), 'Caf\u00e9', 'NFC: a combining accent is composed')
  t.equal(sanitiseLine('e\u0000\u0301'), '\u00e9', 'stripping happens before normalisation')
  t.equal(sanitiseLine('\u212b'), '\u00c5', 'NFC: the Angstrom sign becomes A with ring')
  t.equal(sanitiseLine('\ufb01'), '\ufb01', 'NFC, not NFKC: the fi ligature is kept')
  t.equal(sanitiseLine('\u200e\u200f\u200d'), '\u200e\u200f\u200d', 'marks and joiners that do not reorder text are kept')
  t.equal(sanitiseLine('naïve 🚨 日本語'), 'naïve 🚨 日本語', 'non-ASCII text and astral characters are kept')
  t.equal(sanitiseLine(`${C0}${C1}${BIDI}`), '', 'a line of control characters only becomes empty')
  t.equal(sanitiseLine(' \u00a0 '), ' \u00a0 ', 'spaces are not control characters')
})

t.test('sanitiseText', async (t) => {
  t.equal(sanitiseText('first\nsecond\tcolumn'), 'first\nsecond\tcolumn', 'newline and tab are kept')
  const withoutNewlineAndTab = C0.replace('\n', '').replace('\t', '')
  t.equal(sanitiseText(`a${withoutNewlineAndTab}b`), 'ab', 'the other C0 characters are stripped (CR, VT, FF, ESC...)')
  t.equal(sanitiseText('windows\r\nline'), 'windows\nline', 'CR is stripped, LF kept')
  t.equal(sanitiseText(`a${DEL}${C1}b`), 'ab', 'DEL and C1 are stripped')
  t.equal(sanitiseText(`a${BIDI}b`), 'ab', 'bidi override and isolate characters are stripped')
  t.equal(sanitiseText('\u001b[31mred\u001b[0m'), '[31mred[0m', 'terminal escapes lose their ESC')
  t.equal(sanitiseText('Cafe\u0301\nok'), 'Caf\u00e9\nok', 'NFC')
})

t.test('data keys and values are sanitised (NUL, ESC, U+202E passed through)', async (t) => {
  const body = {
    title: 't\u0000',
    body: 'b\n\u001b',
    data: {
      'host\u0000': 'db\u001b-1\u202e',
      count: 3,
      'list\u2066': ['a\u0000', 1, null, true, ['Cafe\u0301\n'], { 'k\u0085': 'v\t' }],
      nested: { 'deep\u202e': { value: 'x\u0000y' } }
    }
  }
  sanitiseAlertBody(body)
  t.same(body, {
    title: 't',
    body: 'b\n',
    data: {
      host: 'db-1',
      count: 3,
      list: ['a', 1, null, true, ['Caf\u00e9'], { k: 'v' }],
      nested: { deep: { value: 'xy' } }
    }
  }, 'every string key and value, in objects and arrays at every level; newline and tab only survive in body')
  t.same(Object.keys(body.data), ['host', 'count', 'list', 'nested'], 'keys keep their order')
})

t.test('a data key that sanitises to __proto__ does not set the prototype', async (t) => {
  const body = JSON.parse('{"data":{"__proto\\u0000__":{"polluted":true},"inner":[{"__proto\\u202e__":{"polluted":true}}]}}')
  sanitiseAlertBody(body)
  t.equal(Object.getPrototypeOf(body.data), Object.prototype, 'data keeps its prototype')
  t.equal(Object.getPrototypeOf(body.data.inner[0]), Object.prototype, 'nested objects keep theirs')
  t.same(Object.getOwnPropertyDescriptor(body.data, '__proto__')?.value, { polluted: true }, '__proto__ is an own, plain key')
  t.ok(Object.getOwnPropertyDescriptor(body.data, '__proto__')?.enumerable, 'and is sent with the rest')
  t.equal(JSON.stringify(body.data), '{"__proto__":{"polluted":true},"inner":[{"__proto__":{"polluted":true}}]}')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is untouched')
})

t.test('deeply nested data is not sanitised past the depth bound (no stack overflow)', async (t) => {
  const deepest = JSON.parse('{"a":'.repeat(8000) + '"x\\u0000"' + '}'.repeat(8000))
  const body = { data: deepest }
  t.doesNotThrow(() => sanitiseAlertBody(body), '8,000 levels of objects')
  const arrays = { data: JSON.parse('['.repeat(8000) + ']'.repeat(8000)) }
  t.doesNotThrow(() => sanitiseAlertBody(arrays), '8,000 levels of arrays')

  // Level 16 is the deepest valid one: its strings are sanitised, a level 17 is left for validation to refuse.
  const level17 = { 'x\u0000': 'y\u0000' }
  const data: Record<string, unknown> = { 'k\u0000': 'v\u0000', child: level17 }
  let outer: Record<string, unknown> = data
  for (let level = 15; level >= 1; level--) outer = { a: outer }
  const sixteen = { data: outer }
  sanitiseAlertBody(sixteen)
  let level16 = sixteen.data
  for (let level = 1; level < 16; level++) level16 = level16.a as Record<string, unknown>
  t.equal(level16['k'], 'v', 'level 16 is sanitised')
  t.equal(level16.child, level17, 'level 17 is left as sent')
  t.same(level17, { 'x\u0000': 'y\u0000' })
})

t.test('sanitiseAlertBody leaves what is not an alert body to validation', async (t) => {
  for (const body of [null, 'text', 3, [], { title: 1, body: 2, data: 3 }, { data: 'v\u0000' }]) {
    t.doesNotThrow(() => sanitiseAlertBody(body), JSON.stringify(body))
  }
})
