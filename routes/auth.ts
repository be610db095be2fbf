import type { FastifyInstance } from 'fastify'
import { BusUnavailableError } from '../src/lib/errors.js'

/** POST /auth/logout: revokes the caller's tokens and closes their sockets. */
export default async function authRoutes (fastify: FastifyInstance) {
  const { cluster, claims, gatewayConfig: config, limits } = fastify

  fastify.post('/auth/logout', {
    onRequest: [limits.rest(fastify.authenticateUser)]
  }, async (request, reply) => {
    const { sub, exp } = request.user
    const before = Math.floor(Date.now() / 1000)
    // Keep the revocation at least as long as the token used here lives.
    const ttl = Math.max(config.revocationTtlSec, exp - before + 1)
    try {
      // Stored before it is published: a connection claiming the user
      // meanwhile reads it after subscribing (see UserClaims).
      await cluster.revocations.revoke(sub, before, ttl)
      await claims.logout(sub, before)
    } catch (err) {
      request.log.warn({ err }, 'logout not stored or not published')
      throw new BusUnavailableError()
    }
    request.log.info({ userId: sub }, 'user logged out')
    return reply.code(204).send()
  })
}
