import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import fastifyStatic from '@fastify/static'
import Type from 'typebox'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { mintToken } from '../src/dev/dev-tokens.js'

const DevTokenSchema = Type.Object({
  sub: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._@-]+$' }),
  service: Type.Optional(Type.Boolean())
}, { additionalProperties: false })

/** A module path under client/, as the browser asks for it: no dots, so no way out of the folder. */
const MODULE_PATH = /^[a-z0-9-]+(?:\/[a-z0-9-]+)*\.js$/

/**
 * The folder holding package.json: one level up from routes/demo.ts, two
 * from dist/routes/demo.js (`npm start` runs the build).
 */
function packageRoot (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir)
    /* c8 ignore next: this file always lives inside the package */
    if (parent === dir) throw new Error('demo: package.json not found above routes/demo')
    dir = parent
  }
  return dir
}

/** Strips the types from a client module (one file, no type check: `tsc --noEmit` does that). */
async function transpile (path: string, source: string): Promise<string> {
  // typescript is a development dependency: loaded only here, on demand.
  const { default: ts } = await import('typescript')
  return ts.transpileModule(source, {
    fileName: path,
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ES2022,
      inlineSourceMap: true,
      inlineSources: true
    }
  }).outputText
}

/**
 * Development only (never registered in production): the demo page at `/`,
 * the client library and the page's script compiled from client/*.ts at
 * `/client/*.js`, and POST /dev/token, which mints tokens signed with the
 * development secret.
 */
export default async function demoRoutes (fastify: FastifyInstance) {
  const { gatewayConfig: config } = fastify
  const clientDir = join(packageRoot(), 'client')

  fastify.withTypeProvider<TypeBoxTypeProvider>().post('/dev/token', {
    schema: { body: DevTokenSchema }
  }, async (request) => {
    const { sub, service } = request.body
    return { token: mintToken(config.jwt, sub, service === true ? { scope: 'alerts:publish', ttl: '1h' } : { ttl: '1h' }) }
  })

  // The page and its stylesheet only: no wildcard route over the folder.
  await fastify.register(fastifyStatic, { root: join(clientDir, 'demo'), serve: false })
  fastify.get('/', (_request, reply) => reply.sendFile('index.html'))
  fastify.get('/demo.css', (_request, reply) => reply.sendFile('demo.css'))

  fastify.get<{ Params: { '*': string } }>('/client/*', async (request, reply) => {
    const path = request.params['*']
    if (!MODULE_PATH.test(path)) return reply.callNotFound()
    const file = join(clientDir, path.replace(/\.js$/, '.ts'))
    let source: string
    try {
      source = await readFile(file, 'utf8')
    } catch {
      return reply.callNotFound()
    }
    return reply.type('text/javascript; charset=utf-8').header('cache-control', 'no-cache').send(await transpile(file, source))
  })
}
