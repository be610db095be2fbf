import t from 'tap'
import { sanitiseLine, sanitiseText } from '../../src/sanitize.js'

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
