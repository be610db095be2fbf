import type { FastifyInstance } from 'fastify'

/** GET /health (liveness) and GET /ready (accepting traffic). */
export default async function healthRoutes (fastify: FastifyInstance) {
  const { lifecycle, cluster } = fastify

  fastify.get('/health', { logLevel: 'warn' }, async () => ({ status: 'ok' }))

  fastify.get('/ready', { logLevel: 'warn' }, async (_request, reply) => {
    if (lifecycle.phase !== 'ready') return reply.code(503).send({ status: lifecycle.phase })
    if (!await cluster.broker.ping()) return reply.code(503).send({ status: 'bus_unavailable' })
    return { status: 'ready' }
  })
}
