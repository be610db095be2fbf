import t from 'tap'
import { formatPosition, isWellFormedPosition, parsePosition } from '../../protocol/position.js'

t.test('malformed positions are rejected', async (t) => {
  const malformed = ['', 'a'.repeat(65), 'abc:1 ', ' abc:1', 'abc/1', 'abc:1\n', 'é:1', 'abc;1', 'a+b:1', '%41:1', 'abc:1?x']
  for (const value of malformed) t.equal(isWellFormedPosition(value), false, JSON.stringify(value))
})

t.test('well-formed positions are accepted, including ones the server never writes', async (t) => {
  const wellFormed = ['a', 'a'.repeat(64), 'abc:1', 'A-b_c.d:0', ':', 'none:0', '...', 'x:y:z']
  for (const value of wellFormed) t.equal(isWellFormedPosition(value), true, value)
})

t.test('only positions of the server\'s form parse; the others read as unknown', async (t) => {
  t.same(parsePosition('mabc123ef-_:42'), { epoch: 'mabc123ef-_', seq: 42 })
  t.same(parsePosition('e:0'), { epoch: 'e', seq: 0 }, 'the head of an empty stream')
  t.same(parsePosition(formatPosition('e', 999999999999999)), { epoch: 'e', seq: 999999999999999 }, '15 digits')
  const unknown = [
    'e:1000000000000000', // 16 digits: beyond what a stream counts
    'e:01', // leading zero: not written by the server
    'e:-1', 'e:1.5', 'e:', ':1', 'e', 'e:1:2', 'e.x:1', `${'e'.repeat(41)}:1`, 'none'
  ]
  for (const value of unknown) {
    t.equal(isWellFormedPosition(value), true, `${value} is well-formed`)
    t.equal(parsePosition(value), null, `${value} is not a server position`)
  }
  t.same(parsePosition(`${'e'.repeat(40)}:1`), { epoch: 'e'.repeat(40), seq: 1 }, 'epochs up to 40 characters')
})
