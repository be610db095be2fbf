import t from 'tap'
import Type from 'typebox'
import { validatorCompiler } from '../../src/app.js'

const compile = (schema: Parameters<typeof validatorCompiler>[0]['schema']) =>
  validatorCompiler({ schema, method: 'POST', url: '/x', httpPart: 'body' })

t.test('valid and invalid values answer as TypeBox does', async (t) => {
  const validate = compile(Type.Object({ a: Type.String() }))
  t.same(validate({ a: 'x' }), { value: { a: 'x' } })
  const refused = validate({ a: 1 }) as { error: Array<{ instancePath: string }> }
  t.ok(Array.isArray(refused.error) && refused.error.length > 0, 'a list of errors')
})

t.test('a value too deep to check is refused; other exceptions are not hidden', async (t) => {
  const overflow = compile(Type.Refine(Type.String(), () => { throw new RangeError('Maximum call stack size exceeded') }))
  t.match(overflow('x'), { error: [{ instancePath: '', message: 'must not be nested this deeply' }] })
  const fault = compile(Type.Refine(Type.String(), () => { throw new TypeError('a bug') }))
  t.throws(() => fault('x'), TypeError)
})
