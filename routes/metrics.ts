import type { FastifyInstance } from 'fastify'

/** GET /metrics: Prometheus text format. Bind it to a private network. */
export default async function metricsRoutes (fastify: FastifyInstance) {
  const { metrics, bus } = fastify

  fastify.get('/metrics', { logLevel: 'warn' }, async (_request, reply) => {
    metrics.busConnected.set(bus.connected ? 1 : 0)
    reply.type(metrics.registry.contentType)
    return metrics.registry.metrics()
  })
}
