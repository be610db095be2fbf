import { Writable } from 'node:stream'
import t from 'tap'
import pino from 'pino'
import type { FastifyRequest } from 'fastify'
import { loggerOptions, redactUrl } from '../../src/logger.js'

t.test('redactUrl drops the query string', async (t) => {
  t.equal(redactUrl(undefined), undefined)
  t.equal(redactUrl('/ws'), '/ws')
  t.equal(redactUrl('/ws?token=eyJhbGciOi.abc.def'), '/ws?[redacted]')
  t.equal(redactUrl('/ws?'), '/ws?[redacted]')
  t.equal(redactUrl('/a?b=1?token=x'), '/a?[redacted]', 'from the first question mark')
})

t.test('loggerOptions: requests are logged by path, credentials censored', async (t) => {
  const options = loggerOptions('debug')
  t.equal(options.level, 'debug')
  const req = (options.serializers as { req: (r: FastifyRequest) => Record<string, unknown> }).req
  t.same(req({ method: 'GET', url: '/ws?token=secret', ip: '192.0.2.1', headers: { upgrade: 'websocket' } } as unknown as FastifyRequest), {
    method: 'GET', url: '/ws?[redacted]', remoteAddress: '192.0.2.1', upgrade: 'websocket'
  })
  t.same(req({ method: 'POST', url: '/alerts', ip: '::1' } as unknown as FastifyRequest), {
    method: 'POST', url: '/alerts', remoteAddress: '::1', upgrade: undefined
  }, 'a request without headers')

  const lines: string[] = []
  const log = pino(options as pino.LoggerOptions, new Writable({
    write (chunk, _enc, cb) {
      lines.push(chunk.toString())
      cb()
    }
  }))
  log.info({
    token: 'tok-1',
    auth: { token: 'tok-2' },
    headers: { authorization: 'Bearer tok-3', cookie: 'access_token=tok-4' },
    req: { headers: { authorization: 'Bearer tok-5', cookie: 'access_token=tok-6' }, query: { token: 'tok-7' } }
  }, 'hello')
  t.equal(lines.length, 1)
  t.notMatch(lines[0], /tok-\d/, 'no credential reaches the log')
  t.match(lines[0], /\[redacted\]/)
})
