import { createHash, randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { BadIdempotencyKeyError, BusUnavailableError, IdempotencyConflictError } from '../src/lib/errors.js'
import type { Alert } from '../protocol/frames.js'
import { IDEMPOTENCY_KEY, PublishAlertSchema, PublishResultSchema, type PublishAlert, type PublishResult } from '../src/delivery/publish-schema.js'
import { PENDING_TTL_MS } from '../src/cluster/idempotency-store.js'
import type { StreamOwner } from '../src/cluster/history-store.js'
import { sanitiseAlertBody } from '../src/lib/sanitize.js'
import { canonicalJson } from '../src/lib/canonical-json.js'
import { API_HELMET } from '../plugins/security.js'

/** Largest accepted POST /alerts body. */
const BODY_LIMIT = 64 * 1024
/** How often a repeat polls for the answer of a publish still in progress elsewhere. */
const PENDING_POLL_MS = 20

const fingerprintOf = (text: string): string => createHash('sha256').update(text).digest('base64')

/** The stream a single-target alert is appended to (null: broadcasts); undefined for userIds. */
function ownerOf (target: PublishAlert['target']): StreamOwner | undefined {
  if ('all' in target) return null
  return 'userId' in target ? target.userId : undefined
}

/**
 * POST /alerts: a service (token scope `alerts:publish`) publishes an alert
 * to every user, one user, or a list of users. The alert is in history
 * before it is fanned out; the 202 says where it landed and how many
 * sessions it was handed to. With `Idempotency-Key`, a repeat of the same
 * body answers the first answer and delivers nothing.
 */
export default async function alertRoutes (fastify: FastifyInstance) {
  const { delivery, limits, metrics } = fastify
  const { idempotency } = fastify.cluster

  async function publish (request: FastifyRequest, body: PublishAlert, idempotent?: { scope: string, key: string, fingerprint: string }): Promise<PublishResult> {
    const { target, severity, title } = body
    const alert: Alert = { type: 'alert', id: randomUUID(), ts: Date.now(), severity, title }
    if (body.body !== undefined) alert.body = body.body
    if (body.data !== undefined) alert.data = body.data
    try {
      // The answer a retry gets if this request's reply is lost after the append.
      const record = idempotent === undefined
        ? undefined
        : (stream: string) => idempotency.record(idempotent.scope, idempotent.key, idempotent.fingerprint, `{"id":"${alert.id}","delivered":0,"stream":"${stream}","pos":"`)
      return { id: alert.id, ...await delivery.publish(target, alert, record) }
    } catch (err) {
      request.log.warn({ err, alertId: alert.id }, 'alert not stored and published')
      throw new BusUnavailableError()
    }
  }

  /**
   * Publishes once per (service, key): the first request takes the key,
   * publishes and stores its answer; a repeat gets that answer, waiting for
   * it while the first is still publishing (on any instance).
   */
  async function publishOnce (request: FastifyRequest, reply: FastifyReply, body: PublishAlert, key: string): Promise<PublishResult> {
    const scope = request.user.sub
    // The same body, whatever the order of its keys.
    const fingerprint = fingerprintOf(canonicalJson(body))
    const owner = ownerOf(body.target)
    const deadline = Date.now() + PENDING_TTL_MS
    for (;;) {
      const known = await idempotency.begin(scope, key, fingerprint, owner).catch((err: Error) => {
        request.log.warn({ err }, 'idempotency key not readable')
        throw new BusUnavailableError()
      })
      if (known.state === 'new') break
      // Or taken by an instance of an earlier version, which hashed the body
      // in the order it came: a retry across a deploy is still a repeat.
      if (known.fingerprint !== fingerprint && known.fingerprint !== fingerprintOf(JSON.stringify(body))) throw new IdempotencyConflictError()
      if (known.state === 'done') {
        metrics.idempotentReplays.inc()
        reply.header('idempotent-replayed', 'true')
        return JSON.parse(known.answer) as PublishResult
      }
      // Bounded by the key's own expiry: past it the key is free again.
      /* c8 ignore next -- only after PENDING_TTL_MS (30 s) of waiting on a publish that never answered */
      if (Date.now() > deadline) throw new BusUnavailableError()
      await sleep(PENDING_POLL_MS)
    }
    let result: PublishResult
    try {
      result = await publish(request, body, { scope, key, fingerprint })
    } catch (err) {
      // Not published, as far as we know: a retry may publish. If the append
      // did run (its reply lost), it stored its answer, which stays.
      await idempotency.abandon(scope, key, fingerprint, owner).catch(() => {})
      throw err
    }
    await idempotency.complete(scope, key, fingerprint, JSON.stringify(result)).catch((err: Error) => {
      request.log.warn({ err, alertId: result.id }, 'idempotency answer not stored')
    })
    return result
  }

  fastify.withTypeProvider<TypeBoxTypeProvider>().post('/alerts', {
    bodyLimit: BODY_LIMIT,
    schema: {
      body: PublishAlertSchema,
      response: { 202: PublishResultSchema }
    },
    onRequest: [limits.publish(fastify.authenticateService)],
    helmet: API_HELMET,
    // Sanitise before validation, so the length bounds apply to what is sent.
    preValidation: async (request) => { sanitiseAlertBody(request.body) }
  }, async (request, reply) => {
    const key = request.headers['idempotency-key']
    if (key === undefined) return reply.code(202).send(await publish(request, request.body))
    if (typeof key !== 'string' || !IDEMPOTENCY_KEY.test(key)) throw new BadIdempotencyKeyError()
    return reply.code(202).send(await publishOnce(request, reply, request.body, key))
  })
}
