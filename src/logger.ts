import type { FastifyRequest, FastifyServerOptions } from 'fastify'

/** The path of a URL without its query string, which may carry a token. */
export function redactUrl (url: string | undefined): string | undefined {
  if (url === undefined) return undefined
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q) + '?[redacted]'
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
      }
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
