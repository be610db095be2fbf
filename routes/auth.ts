import type { FastifyInstance } from 'fastify'
import { BusUnavailableError } from '../src/lib/errors.js'

/** Longest revocation stored (about 68 years): a token dated further ahead would overflow Redis's expiry. */
export const MAX_REVOCATION_TTL_SEC = 2 ** 31 - 1

/** POST /auth/logout: revokes the caller's tokens and closes their sockets. */
export default async function authRoutes (fastify: FastifyInstance) {
  const { cluster, claims, gatewayConfig: config, limits } = fastify

  fastify.post('/auth/logout', {
    onRequest: [limits.rest(fastify.authenticateUser)]
  }, async (request, reply) => {
    const { sub, exp, iat } = request.user
    // Up to this second, and at least up to the token used here: one dated
    // a few seconds ahead (an issuer whose clock runs ahead, within the
    // accepted skew) is revoked by its own logout.
    const before = Math.max(Math.floor(Date.now() / 1000), typeof iat === 'number' ? Math.ceil(iat) : 0)
    // Keep the revocation at least as long as the token used here lives:
    // whole seconds (`exp` may have a fraction), within what Redis takes.
    const ttl = Math.min(MAX_REVOCATION_TTL_SEC, Math.max(config.revocationTtlSec, Math.ceil(exp - before) + 1))
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
