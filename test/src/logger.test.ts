import type { Socket } from 'node:net'
import { Writable } from 'node:stream'
import t from 'tap'
import pino from 'pino'
import Fastify, { errorCodes, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import createError from '@fastify/error'
import { clientErrorHandler, errorHandler, frameworkErrors, loggerOptions, notFoundHandler, redactUrl, serializeError } from '../../src/logger.js'
import { BusUnavailableError, TokenInvalidError } from '../../src/lib/errors.js'

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

/** A pino logger at trace level with the gateway's options, writing into `lines`. */
function capture (lines: string[]): pino.Logger {
  return pino(loggerOptions('trace') as pino.LoggerOptions, new Writable({
    write (chunk, _enc, cb) {
      lines.push(chunk.toString())
      cb()
    }
  }))
}

t.test('the err serializer drops the raw request bytes of parse errors', async (t) => {
  const err = Object.assign(new Error('Parse Error: Invalid header token'), {
    code: 'HPE_INVALID_HEADER_TOKEN',
    rawPacket: Buffer.from('GET /ws?token=tok-1 HTTP/1.1\r\nAuthorization: Bearer tok-2\r\n')
  })
  const serialized = serializeError(err)
  t.equal(serialized.rawPacket, undefined)
  t.equal(serialized.code, 'HPE_INVALID_HEADER_TOKEN')
  t.equal(serialized.message, 'Parse Error: Invalid header token')

  const lines: string[] = []
  capture(lines).trace({ err }, 'client error')
  t.notMatch(lines[0], /rawPacket/)
  t.match(lines[0], /HPE_INVALID_HEADER_TOKEN/)
})

t.test('path and url fields are logged without their query string', async (t) => {
  const lines: string[] = []
  const log = capture(lines)
  log.info({ path: '/health?token=tok-1' }, 'closed incoming websocket connection for path with no websocket handler')
  log.info({ url: 'https://idp.example/jwks?token=tok-2' }, 'fetching keys')
  log.info({ path: 42, url: null }, 'not strings')
  t.equal(JSON.parse(lines[0]).path, '/health?[redacted]')
  t.equal(JSON.parse(lines[1]).url, 'https://idp.example/jwks?[redacted]')
  t.same([JSON.parse(lines[2]).path, JSON.parse(lines[2]).url], [42, null], 'other values are kept')
})

t.test('404s and bad URLs are answered and logged without the query string', async (t) => {
  const lines: string[] = []
  const app = Fastify({ loggerInstance: capture(lines), frameworkErrors })
  app.setNotFoundHandler(notFoundHandler)
  app.get('/items/:id', async () => 'found')
  t.teardown(() => app.close())

  const missing = await app.inject({ method: 'POST', url: '/nope?token=tok-1' })
  t.equal(missing.statusCode, 404)
  t.same(missing.json(), { message: 'Route POST:/nope not found', error: 'Not Found', statusCode: 404 })

  const badUrl = await app.inject('/%zz?token=tok-2')
  t.equal(badUrl.statusCode, 400)
  t.same(badUrl.json(), { statusCode: 400, code: 'FST_ERR_BAD_URL', error: 'Bad Request', message: "'/%zz' is not a valid url component" })

  const longParam = await app.inject(`/items/${'a'.repeat(200)}?token=tok-3`)
  t.equal(longParam.statusCode, 414)
  t.equal(longParam.json().code, 'FST_ERR_MAX_PARAM_LENGTH')
  t.notMatch(longParam.body, /tok-3/)

  t.match(lines.join(''), /Route POST:\/nope not found/)
  t.notMatch(lines.join(''), /tok-\d/, 'no query string reaches the log')
})

t.test('errorHandler: an unexpected 5xx is logged, its message never sent; the others as Fastify answers them', async (t) => {
  const lines: string[] = []
  const app = Fastify({ loggerInstance: capture(lines) })
  app.setErrorHandler(errorHandler)
  const DependencyError = createError('DEP_FAILED', 'upstream said: secret-detail', 502)
  app.get('/throws', async () => { throw new Error('secret-detail of an exception') })
  app.get('/dependency', async () => { throw new DependencyError() })
  app.get('/own-503', async () => { throw new BusUnavailableError() })
  app.get('/own-401', async () => { throw new TokenInvalidError() })
  app.get('/odd', async () => { throw Object.assign(new Error('secret-detail'), { statusCode: 599 }) })
  t.teardown(() => app.close())

  const thrown = await app.inject('/throws')
  t.equal(thrown.statusCode, 500)
  t.same(thrown.json(), { statusCode: 500, error: 'Internal Server Error', message: 'Internal Server Error' })
  const dependency = await app.inject('/dependency')
  t.equal(dependency.statusCode, 502, 'the status is kept')
  t.same(dependency.json(), { statusCode: 502, error: 'Bad Gateway', message: 'Bad Gateway' })
  t.notMatch(thrown.body + dependency.body, /secret-detail/, 'no message of theirs is sent')
  t.match(lines.join(''), /secret-detail of an exception/, 'it is logged')
  t.match(lines.join(''), /upstream said: secret-detail/)

  const odd = await app.inject('/odd')
  t.equal(odd.statusCode, 599)
  t.same(odd.json(), { statusCode: 599, error: 'Internal Server Error', message: 'Internal Server Error' }, 'a status without a name')

  const own = await app.inject('/own-503')
  t.equal(own.statusCode, 503)
  t.match(own.json(), { code: 'WS_BUS_UNAVAILABLE', message: 'message bus unavailable' }, "the gateway's own 5xx keep their answer")
  const refused = await app.inject('/own-401')
  t.equal(refused.statusCode, 401)
  t.match(refused.json(), { code: 'WS_TOKEN_INVALID', message: 'invalid or expired token' })
})

t.test('frameworkErrors passes on the errors that quote no URL', async (t) => {
  const error = new errorCodes.FST_ERR_ASYNC_CONSTRAINT()
  let sent: unknown
  const reply = { send (payload: unknown) { sent = payload } }
  frameworkErrors(error, { url: '/x?token=tok-1' } as FastifyRequest, reply as unknown as FastifyReply)
  t.equal(sent, error)
})

t.test('clientErrorHandler answers as Fastify does and never logs the raw request', async (t) => {
  const rawPacket = Buffer.from('GET /ws?token=tok-1 HTTP/1.1\r\nAuthorization: Bearer tok-2\r\nCookie: access_token=tok-3\r\n')
  const clientError = (code: string | undefined, message: string): NodeJS.ErrnoException =>
    Object.assign(new Error(message), { code, rawPacket })
  const answer = (err: NodeJS.ErrnoException, state: { destroyed?: boolean, writable?: boolean } = {}) => {
    const lines: string[] = []
    const socket = {
      destroyed: state.destroyed ?? false,
      writable: state.writable ?? true,
      written: '',
      destroyedWith: undefined as unknown,
      write (data: string) { this.written += data },
      destroy (e: unknown) { this.destroyedWith = e }
    }
    clientErrorHandler.call({ log: capture(lines) } as unknown as FastifyInstance, err, socket as unknown as Socket)
    return { lines, socket }
  }

  const bad = answer(clientError('HPE_INVALID_HEADER_TOKEN', 'Parse Error: Invalid header token'))
  t.match(bad.socket.written, /^HTTP\/1\.1 400 Bad Request\r\n/)
  t.same(JSON.parse(bad.socket.written.split('\r\n\r\n')[1]), { error: 'Bad Request', message: 'Client Error', statusCode: 400 })
  t.match(bad.socket.written, /\r\nContent-Type: application\/json\r\n/)
  t.ok(bad.socket.destroyedWith instanceof Error, 'the connection is destroyed')
  t.equal(bad.lines.length, 1)
  t.match(JSON.parse(bad.lines[0]), { level: 10, code: 'HPE_INVALID_HEADER_TOKEN', reason: 'Parse Error: Invalid header token', msg: 'client error' })

  const overflow = answer(clientError('HPE_HEADER_OVERFLOW', 'Parse Error: Header overflow'))
  t.match(overflow.socket.written, /^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/)
  t.match(overflow.socket.written, /"message":"Exceeded maximum allowed HTTP header size","statusCode":431/)
  t.match(overflow.lines[0], /"msg":"client header_overflow"/)

  const timeout = answer(clientError('ERR_HTTP_REQUEST_TIMEOUT', 'Request timeout'))
  t.match(timeout.socket.written, /^HTTP\/1\.1 408 Request Timeout\r\n/)
  t.match(timeout.socket.written, /"message":"Client Timeout","statusCode":408/)
  t.match(timeout.lines[0], /"msg":"client timeout"/)

  const noCode = answer(clientError(undefined, 'odd'))
  t.match(noCode.socket.written, /^HTTP\/1\.1 400 /)

  const unwritable = answer(clientError('HPE_INVALID_METHOD', 'Parse Error: Invalid method'), { writable: false })
  t.equal(unwritable.socket.written, '', 'nothing is written to a socket that cannot take it')
  t.ok(unwritable.socket.destroyedWith instanceof Error)

  for (const gone of [answer(clientError('ECONNRESET', 'read ECONNRESET')), answer(clientError('HPE_INVALID_METHOD', 'x'), { destroyed: true })]) {
    t.equal(gone.socket.written, '', 'a reset connection gets no answer')
    t.equal(gone.socket.destroyedWith, undefined)
    t.same(gone.lines, [])
  }

  const all = [bad, overflow, timeout, noCode, unwritable].flatMap((a) => a.lines).join('')
  t.notMatch(all, /tok-\d|rawPacket/, 'neither the raw request nor its credentials are logged')
})

t.test('an err given as a message string is logged as that string', async (t) => {
  const lines: string[] = []
  capture(lines).warn({ err: 'Connection is closed.' }, 'redis connection error')
  t.equal(JSON.parse(lines[0]).err, 'Connection is closed.')
})
