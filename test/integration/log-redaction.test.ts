import { once } from 'node:events'
import { connect } from 'node:net'
import t, { type Test } from 'tap'
import { startGateway, type GatewayProcess } from '../helpers/gateway-process.js'
import { publish } from '../helpers/http.js'
import { withTimeout } from '../helpers/timeout.js'
import { nowSec, serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient, type OpenOptions } from '../helpers/ws-client.js'

// The gateway runs as a TypeScript child process: start-up takes seconds.
t.setTimeout(300_000)

const SLICE = 12

/** Whether `text` holds the token or any 12-character part of its signature. */
function leaks (text: string, token: string): string | undefined {
  if (text.includes(token)) return token
  const signature = token.slice(token.lastIndexOf('.') + 1)
  for (let i = 0; i + SLICE <= signature.length; i++) {
    const part = signature.slice(i, i + SLICE)
    if (text.includes(part)) return part
  }
  return undefined
}

/**
 * The output with every serialised Buffer (pino writes `{"type":"Buffer","data":[...]}`)
 * decoded, so raw request bytes are searched as text.
 */
function decodeBuffers (output: string): string {
  return output.replace(/\{"type":"Buffer","data":\[([\d,]*)\]\}/g, (_all, bytes: string) =>
    Buffer.from(bytes === '' ? [] : bytes.split(',').map(Number)).toString('latin1'))
}

/** The log lines of `output` that hold `part`, to name what leaked. */
function linesWith (output: string, part: string): string {
  return output.split('\n').filter((line) => line.includes(part)).join('\n')
}

/** Resolves when the process output matches `pattern`; rejects after `timeoutMs`. */
async function waitForOutput (gw: GatewayProcess, pattern: RegExp, timeoutMs = 10_000): Promise<void> {
  let check = (): void => {}
  try {
    await withTimeout(new Promise<void>((resolve) => {
      check = () => { if (pattern.test(gw.output())) resolve() }
      gw.child.stdout?.on('data', check)
      gw.child.stderr?.on('data', check)
      check()
    }), timeoutMs, `output matching ${pattern}`)
  } finally {
    gw.child.stdout?.off('data', check)
    gw.child.stderr?.off('data', check)
  }
}

/** Writes `request` on a raw TCP connection and reads the answer until the server closes it. */
async function rawExchange (gw: GatewayProcess, request: string): Promise<{ status: number, answer: string }> {
  const socket = connect(gw.port, '127.0.0.1')
  let answer = ''
  socket.on('data', (chunk: Buffer) => { answer += chunk.toString('latin1') })
  // The server destroys the connection after a client error: a reset is an ordinary end here.
  socket.on('error', () => {})
  socket.write(request, 'latin1')
  await withTimeout(once(socket, 'close'), 10_000, 'the server to close the connection')
  const match = /^HTTP\/1\.1 (\d{3})/.exec(answer)
  return { status: match === null ? 0 : Number(match[1]), answer }
}

async function httpExchange (gw: GatewayProcess, method: string, path: string): Promise<{ status: number, answer: string }> {
  const res = await fetch(`${gw.url}${path}`, { method, signal: AbortSignal.timeout(10_000) })
  return { status: res.status, answer: await res.text() }
}

interface Case {
  name: string
  token: string
  /** Sends the request; returns what the client received (checked for the token too). */
  run: (t: Test, gw: GatewayProcess, token: string) => Promise<string>
}

const expired = (sub: string): string => userToken(sub, { iat: nowSec() - 7200, exp: nowSec() - 3600 })

/** A request with `?token=` that no route takes: 404, the query nowhere. */
function notFound (name: string, method: string, path: string, token: string): Case {
  return {
    name,
    token,
    async run (t, gw, token) {
      const { status, answer } = await httpExchange(gw, method, `${path}?token=${token}`)
      t.equal(status, 404)
      return answer
    }
  }
}

const credentials = (token: string): string => `Authorization: Bearer ${token}\r\nCookie: access_token=${token}\r\n`

/** Raw request bytes Node cannot parse: answered `status`, `logged` (when given) in the output. */
function raw (name: string, token: string, request: (token: string) => string, status: number, logged?: RegExp): Case {
  return {
    name,
    token,
    async run (t, gw, token) {
      const exchange = await rawExchange(gw, request(token))
      t.equal(exchange.status, status)
      if (logged !== undefined) await waitForOutput(gw, logged)
      return exchange.answer
    }
  }
}

/** An accepted /ws upgrade of `user`, its token sent as `how` says. */
function upgrade (name: string, user: string, how: (token: string) => OpenOptions): Case {
  return {
    name,
    token: userToken(user),
    async run (t, gw, token) {
      const { client, welcome } = await TestClient.connect(gw.wsUrl, how(token))
      t.equal(welcome.userId, user)
      await client.close()
      return ''
    }
  }
}

const cases: Case[] = [
  notFound('GET /ws/ (trailing slash) with ?token=', 'GET', '/ws/', userToken('leak-ws-slash')),
  notFound('POST /ws with ?token=', 'POST', '/ws', userToken('leak-post-ws')),
  notFound('GET /alerts with ?token=', 'GET', '/alerts', serviceToken('leak-get-alerts')),
  {
    name: 'GET /nope with ?token=',
    token: userToken('leak-nope'),
    async run (t, gw, token) {
      const { status, answer } = await httpExchange(gw, 'GET', `/nope?token=${token}`)
      t.equal(status, 404)
      t.same(JSON.parse(answer), { message: 'Route GET:/nope not found', error: 'Not Found', statusCode: 404 },
        'the 404 keeps Fastify\'s shape without the query string')
      return answer
    }
  },
  raw('malformed request (bad header bytes) with the token in query, Authorization and Cookie', userToken('leak-bad-header'),
    (token) => `GET /ws?token=${token} HTTP/1.1\r\nHost: gw\r\n${credentials(token)}X-Bad\u0001: 1\r\n\r\n`, 400, /"msg":"client error"/),
  raw('malformed request line with the token in query, Authorization and Cookie', userToken('leak-bad-line'),
    (token) => `GET /ws?token=${token} HTTP/1.1 trailing\r\nHost: gw\r\n${credentials(token)}\r\n`, 400),
  raw('headers too large (431) with the token in query, Authorization and Cookie', userToken('leak-431'),
    (token) => `GET /ws?token=${token} HTTP/1.1\r\nHost: gw\r\n${credentials(token)}X-Pad: ${'a'.repeat(20_000)}\r\n\r\n`, 431, /"msg":"client header_overflow"/),
  {
    name: 'bad percent-encoding in the path with ?token=',
    token: userToken('leak-bad-url'),
    async run (t, gw, token) {
      const { status, answer } = await rawExchange(gw, `GET /%zz?token=${token} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n`)
      t.equal(status, 400)
      return answer
    }
  },
  {
    name: 'GET /client/<missing file> (a route calling the 404 handler) with ?token=',
    token: userToken('leak-client-file'),
    async run (t, gw, token) {
      const { status, answer } = await rawExchange(gw, `GET /client/missing.js?token=${token} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n`)
      t.equal(status, 404)
      return answer
    }
  },
  upgrade('/ws upgrade with ?token=', 'leak-ws-query', (token) => ({ token })),
  upgrade('/ws upgrade with the access_token cookie', 'leak-ws-cookie', (token) => ({ headers: { cookie: `access_token=${token}` } })),
  {
    name: '/ws upgrade with an expired token in ?token=',
    token: expired('leak-ws-expired'),
    async run (t, gw, token) {
      const refusal = await TestClient.refused(gw.wsUrl, { token })
      t.equal(refusal.status, 401)
      return refusal.body
    }
  },
  {
    name: 'upgrade to a missing path with ?token=',
    token: userToken('leak-ws-missing'),
    async run (t, gw, token) {
      const refusal = await TestClient.refused(`${gw.url.replace('http', 'ws')}/ws/`, { token })
      t.equal(refusal.status, 404)
      return refusal.body
    }
  },
  {
    name: 'upgrade to a route without a WebSocket handler with ?token=',
    token: userToken('leak-ws-plain-route'),
    async run (t, gw, token) {
      const client = await TestClient.open(`${gw.url.replace('http', 'ws')}/health`, { token })
      t.equal((await client.waitClosed()).code, 1005, 'closed by the gateway')
      await waitForOutput(gw, /no websocket handler/)
      return ''
    }
  },
  {
    name: 'POST /alerts with a Bearer token',
    token: serviceToken('leak-publisher'),
    async run (t, gw, token) {
      const { status } = await publish(gw.url, token, { target: { all: true }, severity: 'info', title: 'log redaction' })
      t.equal(status, 202)
      return ''
    }
  }
]

t.test('tokens reach the logs: no part of a token is logged, at trace level, on any path', async (t) => {
  const gw = await startGateway(t, { LOG_LEVEL: 'trace' })
  const answers = new Map<string, string>()
  for (const [i, c] of cases.entries()) {
    answers.set(c.name, await c.run(t, gw, c.token))
    // Requests are handled in order: once the gateway logs this probe's 404,
    // everything it logs while handling the case above is in the output.
    const probe = `/settled-${i}`
    t.equal((await httpExchange(gw, 'GET', probe)).status, 404)
    await waitForOutput(gw, new RegExp(`Route GET:${probe} not found`))
  }
  const output = decodeBuffers(gw.output())
  t.match(output, /"level":10/, 'trace lines are written')
  t.notMatch(output, /rawPacket/, 'raw request bytes are not logged')
  for (const c of cases) {
    const leaked = leaks(output, c.token)
    t.equal(leaked, undefined, `${c.name}: no part of the token in the logs`, { lines: leaked === undefined ? '' : linesWith(output, leaked) })
    t.equal(leaks(answers.get(c.name) as string, c.token), undefined, `${c.name}: the answer does not echo the token`)
  }
})
