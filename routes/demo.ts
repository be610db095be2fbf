import { existsSync } from 'node:fs'
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

/**
 * The compiled folders the page's modules come from, each served at its own
 * name: client/ imports the wire contract as `../protocol/*.js`.
 */
const MODULE_FOLDERS = ['client', 'protocol'] as const

/** A compiled module or its source map, as the browser asks for it: no dots, so no way out of the folder. */
const MODULE_PATH = /^[a-z0-9-]+(?:\/[a-z0-9-]+)*\.js(?:\.map)?$/

export interface DemoRoutesOptions {
  /** The build output holding client/ and protocol/: the package's dist/ (`npm run build`) by default. */
  distDir?: string
}

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

/**
 * Development only (never registered in production): the demo page at `/`,
 * the client library and the page's script as compiled by `npm run build`
 * (dist/client, dist/protocol) at `/client/*.js` and `/protocol/*.js`, and
 * POST /dev/token, which mints tokens signed with the development secret.
 */
export default async function demoRoutes (fastify: FastifyInstance, opts: DemoRoutesOptions) {
  const { gatewayConfig: config } = fastify
  const root = packageRoot()
  // The same dist/ whether the gateway runs from it (`npm start`) or from source (tests).
  const distDir = opts.distDir ?? join(root, 'dist')
  for (const folder of MODULE_FOLDERS) {
    // At start, not on every request: there is no compiler at run time.
    if (!existsSync(join(distDir, folder))) throw new Error(`demo: ${join(distDir, folder)} is missing: run \`npm run build\` first`)
  }

  fastify.withTypeProvider<TypeBoxTypeProvider>().post('/dev/token', {
    schema: { body: DevTokenSchema }
  }, async (request) => {
    const { sub, service } = request.body
    return { token: mintToken(config.jwt, sub, service === true ? { scope: 'alerts:publish', ttl: '1h' } : { ttl: '1h' }) }
  })

  // reply.sendFile for the page, its stylesheet and the modules below: no wildcard route over any folder.
  await fastify.register(fastifyStatic, {
    root: join(root, 'client', 'demo'),
    serve: false,
    setHeaders (reply, path) {
      if (!/\.js(?:\.map)?$/.test(path)) return
      // The modules are revalidated on every load (ETag), so a rebuild shows at once.
      reply.header('cache-control', 'no-cache')
      // send's mime table says application/javascript; text/javascript is the current name (RFC 9239).
      if (path.endsWith('.js')) reply.type('text/javascript; charset=utf-8')
    }
  })
  fastify.get('/', (_request, reply) => reply.sendFile('index.html'))
  fastify.get('/demo.css', (_request, reply) => reply.sendFile('demo.css'))

  for (const folder of MODULE_FOLDERS) {
    const folderDir = join(distDir, folder)
    fastify.get<{ Params: { '*': string } }>(`/${folder}/*`, (request, reply) => {
      const path = request.params['*']
      if (!MODULE_PATH.test(path)) return reply.callNotFound()
      return reply.sendFile(path, folderDir)
    })
  }
}
