import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { BusUnavailableError } from '../src/lib/errors.js'
import type { Alert } from '../protocol/frames.js'
import { PublishAlertSchema, PublishResultSchema } from '../src/delivery/publish-schema.js'
import { sanitiseAlertBody } from '../src/lib/sanitize.js'

/** Largest accepted POST /alerts body. */
const BODY_LIMIT = 64 * 1024

/**
 * POST /alerts: a service (token scope `alerts:publish`) publishes an alert
 * to every user or to one. Answers 202 `{id, delivered}`, where `delivered`
 * counts the sockets written on this instance; other instances deliver
 * through the bus and count in their own metrics.
 */
export default async function alertRoutes (fastify: FastifyInstance) {
  const { delivery, limits } = fastify

  fastify.withTypeProvider<TypeBoxTypeProvider>().post('/alerts', {
    bodyLimit: BODY_LIMIT,
    schema: {
      body: PublishAlertSchema,
      response: { 202: PublishResultSchema }
    },
    onRequest: [limits.publish(fastify.authenticateService)],
    // Sanitise before validation, so the length bounds apply to what is sent.
    preValidation: async (request) => { sanitiseAlertBody(request.body) }
  }, async (request, reply) => {
    const { target, severity, title, body, data } = request.body
    const alert: Alert = { type: 'alert', id: randomUUID(), ts: Date.now(), severity, title }
    if (body !== undefined) alert.body = body
    if (data !== undefined) alert.data = data
    // Encoded once, written as the same buffer to every socket.
    const frame = Buffer.from(JSON.stringify(alert))
    let delivered: number
    try {
      if ('all' in target) {
        delivered = await delivery.broadcast(frame)
      } else {
        delivered = await delivery.sendToUser(target.userId, frame)
      }
    } catch (err) {
      request.log.warn({ err, alertId: alert.id }, 'alert not published to the other instances')
      throw new BusUnavailableError()
    }
    return reply.code(202).send({ id: alert.id, delivered })
  })
}
