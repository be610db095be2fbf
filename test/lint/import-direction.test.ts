import t from 'tap'
import { fileURLToPath } from 'node:url'
import { ESLint } from 'eslint'

// The layout's import direction (routes -> plugins -> src -> protocol,
// config) is kept by eslint.config.js; these imports against it must fail
// the lint, and the same files' real imports must pass.
const eslint = new ESLint({ cwd: fileURLToPath(new URL('../..', import.meta.url)) })

async function restricted (filePath: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath })
  return result.messages.filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message)
}

t.test('imports against the direction fail the lint', async (t) => {
  t.match(await restricted('src/session/example.ts', "import type { FastifyInstance } from 'fastify'\nexport type X = FastifyInstance\n"), [/the core knows no Fastify/])
  t.match(await restricted('src/session/example.ts', "export { ACCESS_TOKEN_COOKIE } from '../../plugins/auth.js'\n"), [/the core \(src\/\) imports only/])
  t.match(await restricted('protocol/example.ts', "export { TokenMissingError } from '../src/lib/errors.js'\n"), [/protocol\/ is the wire contract/])
  t.match(await restricted('config/example.ts', "export { CloseCode } from '../protocol/close-codes.js'\n"), [/config\/ imports nothing/])
  t.match(await restricted('plugins/example.ts', "export { default } from '../routes/ws.js'\n"), [/plugins\/ import only/])
  t.match(await restricted('client/example.ts', "export { TokenMissingError } from '../src/lib/errors.js'\n"), [/the SDK \(client\/\) imports only/])
})

t.test('imports along the direction pass', async (t) => {
  t.same(await restricted('src/session/example.ts', "export { CloseCode } from '../../protocol/close-codes.js'\nexport { TokenMissingError } from '../lib/errors.js'\n"), [])
  t.same(await restricted('plugins/example.ts', "export { Delivery } from '../src/delivery/delivery.js'\n"), [])
  t.same(await restricted('client/example.ts', "export { CloseCode } from '../protocol/close-codes.js'\n"), [])
  t.same(await restricted('src/app.ts', "export { default } from '../plugins/auth.js'\n"), [], 'the composition root registers plugins')
})
