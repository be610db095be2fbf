import type { FastifyInstance } from 'fastify'

/** GET /metrics: Prometheus text format. Bind it to a private network. */
export default async function metricsRoutes (fastify: FastifyInstance) {
  const { metrics } = fastify

  fastify.get('/metrics', { logLevel: 'warn' }, async (_request, reply) => {
    reply.type(metrics.registry.contentType)
    return metrics.registry.metrics()
  })
}
