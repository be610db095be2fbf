import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import { errorCodes, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import { stdSerializers } from 'pino'

/** The path of a URL without its query string, which may carry a token. */
export function redactUrl (url: string | undefined): string | undefined {
  if (url === undefined) return undefined
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q) + '?[redacted]'
}

/** The path of a URL, its query string left out. */
function pathOf (url: string): string {
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q)
}

/**
 * A logged `path` or `url` field: @fastify/websocket logs `{ path: request.url }`
 * when an upgrade reaches a route without a WebSocket handler.
 */
function redactUrlField (value: unknown): unknown {
  return typeof value === 'string' ? redactUrl(value) : value
}

/**
 * pino's error serializer, less `rawPacket`: Node attaches the raw bytes of
 * a request it cannot parse, query string and Authorization or Cookie
 * header included.
 */
export function serializeError (err: Error): ReturnType<typeof stdSerializers.err> {
  // `{ err: err.message }` logs the message as it is, not spread into characters.
  if (typeof err !== 'object' || err === null) return err
  const { rawPacket: _rawPacket, ...serialized } = stdSerializers.err(err)
  return serialized as ReturnType<typeof stdSerializers.err>
}

/**
 * Pino options for the gateway: requests are logged by path only (the query
 * string may hold `?token=`), and credentials are censored wherever they
 * appear in a logged object.
 */
export function loggerOptions (level: string): Exclude<FastifyServerOptions['logger'], boolean | undefined> {
  return {
    level,
    serializers: {
      req (request: FastifyRequest) {
        return {
          method: request.method,
          url: redactUrl(request.url),
          remoteAddress: request.ip,
          upgrade: request.headers?.upgrade
        }
      },
      err: serializeError,
      path: redactUrlField,
      url: redactUrlField
    },
    redact: {
      paths: [
        'req.headers.authorization', 'req.headers.cookie', 'req.query.token',
        'headers.authorization', 'headers.cookie', 'token', '*.token'
      ],
      censor: '[redacted]'
    }
  }
}

/**
 * Fastify's 404 (the same log line and JSON answer) naming the path without
 * its query string: Fastify's own quotes the whole URL.
 */
export function notFoundHandler (request: FastifyRequest, reply: FastifyReply): void {
  const message = `Route ${request.method}:${pathOf(request.url)} not found`
  request.log.info(message)
  reply.code(404).send({ message, error: 'Not Found', statusCode: 404 })
}

/**
 * The app's error handler: Fastify's own answer (reply.send from here hands
 * the error to it), except for a 5xx that is not one of the gateway's
 * errors (src/lib/errors.ts, codes `WS_*`): an exception of the code or of a
 * dependency. Its message is logged, never sent; the answer keeps the
 * status and says no more than it.
 */
export function errorHandler (error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const status = error.statusCode ?? 500
  if (status < 500 || error.code?.startsWith('WS_') === true) {
    reply.send(error)
    return
  }
  request.log.error({ err: error }, 'request failed')
  const label = STATUS_CODES[status] ?? 'Internal Server Error'
  reply.code(status).send({ statusCode: status, error: label, message: label })
}

// Their messages quote the URL as received, query string included.
const URL_ERRORS: Record<string, new (url: string) => FastifyError> = {
  FST_ERR_BAD_URL: errorCodes.FST_ERR_BAD_URL,
  FST_ERR_MAX_PARAM_LENGTH: errorCodes.FST_ERR_MAX_PARAM_LENGTH
}

/**
 * Fastify's `frameworkErrors` option: URLs the router rejects get Fastify's
 * answer (and its log lines), with the path in place of the whole URL.
 */
export function frameworkErrors (error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const Redacted = URL_ERRORS[error.code]
  reply.send(Redacted === undefined ? error : new Redacted(pathOf(request.url)))
}

const CLIENT_ERRORS: Record<string, { status: number, label: string, message: string }> = {
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, label: 'timeout', message: 'Client Timeout' },
  HPE_HEADER_OVERFLOW: { status: 431, label: 'header_overflow', message: 'Exceeded maximum allowed HTTP header size' }
}
const OTHER_CLIENT_ERROR = { status: 400, label: 'error', message: 'Client Error' }

/**
 * Fastify's `clientErrorHandler` option: Fastify's answers to requests Node
 * cannot parse, but the log line holds the error's code and message only,
 * never the raw request bytes (`err.rawPacket`).
 */
export function clientErrorHandler (this: FastifyInstance, err: NodeJS.ErrnoException, socket: Socket): void {
  // A reset connection has nothing left to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const answer = CLIENT_ERRORS[err.code ?? ''] ?? OTHER_CLIENT_ERROR
  this.log.trace({ code: err.code, reason: err.message }, `client ${answer.label}`)
  if (socket.writable) {
    const status = STATUS_CODES[answer.status] as string
    const body = JSON.stringify({ error: status, message: answer.message, statusCode: answer.status })
    socket.write(`HTTP/1.1 ${answer.status} ${status}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\n\r\n${body}`)
  }
  socket.destroy(err)
}
