import type { FastifyInstance } from 'fastify'
import Type from 'typebox'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { mintToken } from '../src/dev-tokens.js'

const DevTokenSchema = Type.Object({
  sub: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._@-]+$' }),
  service: Type.Optional(Type.Boolean())
}, { additionalProperties: false })

/**
 * Development only (never registered in production): mints tokens signed
 * with the development secret, for the demo page.
 */
export default async function demoRoutes (fastify: FastifyInstance) {
  const { gatewayConfig: config } = fastify
  fastify.withTypeProvider<TypeBoxTypeProvider>().post('/dev/token', {
    schema: { body: DevTokenSchema }
  }, async (request) => {
    const { sub, service } = request.body
    return { token: mintToken(config.jwt, sub, service === true ? { scope: 'alerts:publish', ttl: '1h' } : { ttl: '1h' }) }
  })
}
