import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { createMetrics, type GatewayMetrics } from '../src/lib/metrics.js'

export interface MetricsOptions {
  /** Collect Node's default process metrics (default true). */
  defaultMetrics?: boolean
}

/** Decorates `fastify.metrics` with the gateway's Prometheus metrics. */
async function metricsPlugin (fastify: FastifyInstance, opts: MetricsOptions) {
  fastify.decorate('metrics', createMetrics(opts.defaultMetrics ?? true))
}

export default fp(metricsPlugin, { name: 'metrics', fastify: '5.x' })

declare module 'fastify' {
  interface FastifyInstance {
    metrics: GatewayMetrics
  }
}
