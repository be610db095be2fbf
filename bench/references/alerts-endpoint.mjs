import { randomUUID } from 'node:crypto'
import { createTokenVerifier } from '../lib/verify.mjs'

const BODY_LIMIT = 64 * 1024
const SEVERITIES = new Set(['info', 'warning', 'critical'])
const JSON_TYPE = { 'content-type': 'application/json' }

/**
 * The environment both reference servers read: HOST, PORT, JWT_SECRET,
 * REDIS_URL (optional), HEARTBEAT_INTERVAL_MS (default 30000) and
 * WS_MAX_MESSAGE_BYTES (default 10240).
 */
export function referenceSettings (env = process.env) {
  return {
    host: env.HOST ?? '127.0.0.1',
    port: Number(env.PORT ?? 3000),
    secret: env.JWT_SECRET,
    redisUrl: env.REDIS_URL,
    heartbeatMs: Number(env.HEARTBEAT_INTERVAL_MS ?? 30000),
    maxPayload: Number(env.WS_MAX_MESSAGE_BYTES ?? 10240)
  }
}

function answer (res, status, body) {
  res.writeHead(status, JSON_TYPE)
  res.end(body === undefined ? undefined : JSON.stringify(body))
}

/**
 * The HTTP side shared by both reference servers, so that alerts reach them
 * the way they reach the gateway: `POST /alerts` with a service token
 * (HS256 via fast-jwt, scope `alerts:publish`), the gateway's body shape,
 * answered 202 `{id, delivered}` once the alert is handed to the bus; plus
 * `GET /health` and `GET /ready`.
 *
 * `publish(alert, target)` delivers locally and forwards to the other
 * instances; it resolves to the number of local deliveries.
 */
export function createHttpHandler ({ secret, isReady, publish }) {
  const verify = createTokenVerifier(secret)

  return function handle (req, res) {
    if (req.method === 'GET' && req.url === '/health') return answer(res, 200, { status: 'ok' })
    if (req.method === 'GET' && req.url === '/ready') return answer(res, isReady() ? 200 : 503, { ready: isReady() })
    if (req.method !== 'POST' || req.url !== '/alerts') return answer(res, 404, { error: 'not found' })

    let claims
    try {
      claims = verify((req.headers.authorization ?? '').replace(/^Bearer\s+/i, ''))
    } catch {
      return answer(res, 401, { error: 'unauthorized' })
    }
    if (!String(claims.scope ?? '').split(' ').includes('alerts:publish')) return answer(res, 403, { error: 'forbidden' })

    const chunks = []
    let size = 0
    req.on('data', (chunk) => {
      size += chunk.length
      if (size > BODY_LIMIT) {
        answer(res, 413, { error: 'too large' })
        req.destroy()
      } else {
        chunks.push(chunk)
      }
    })
    req.on('end', () => {
      let input
      try {
        input = JSON.parse(Buffer.concat(chunks).toString())
      } catch {
        return answer(res, 400, { error: 'invalid json' })
      }
      const target = input?.target
      const validTarget = target?.all === true || (typeof target?.userId === 'string' && target.userId !== '')
      if (!validTarget || !SEVERITIES.has(input.severity) || typeof input.title !== 'string' || input.title === '') {
        return answer(res, 400, { error: 'invalid alert' })
      }
      const alert = { type: 'alert', id: randomUUID(), ts: Date.now(), severity: input.severity, title: input.title }
      if (typeof input.body === 'string') alert.body = input.body
      if (input.data !== null && typeof input.data === 'object') alert.data = input.data
      publish(alert, target).then(
        (delivered) => answer(res, 202, { id: alert.id, delivered }),
        () => answer(res, 503, { error: 'bus unavailable' })
      )
    })
  }
}
