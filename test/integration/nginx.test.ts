import t from 'tap'
import { request } from 'node:https'
import { startGateway, type GatewayProcess } from '../helpers/gateway-process.js'
import { waitForStatus } from '../helpers/http.js'
import { nginxAvailable, tlsFront } from '../helpers/nginx.js'
import { serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

/** HTTPS request through the proxy, trusting only the throwaway CA. */
async function httpsRequest (url: string, ca: Buffer, opts: { method?: string, headers?: Record<string, string>, body?: string } = {}): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', headers: opts.headers, ca, timeout: 10000 }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end(opts.body)
  })
}

async function activeOn (gateway: GatewayProcess): Promise<number> {
  const text = await (await fetch(`${gateway.url}/metrics`)).text()
  return Number(/^ws_connections_active (\d+)/m.exec(text)?.[1])
}

t.test('two instances behind nginx with TLS', { skip: nginxAvailable ? false : 'nginx is not installed (.ci/run installs it)' }, async (t) => {
  const front = await tlsFront(t)
  const { certs } = front
  const { a: portA, b: portB, listen } = front.ports
  const env = {
    ...front.env,
    MAX_CONNECTIONS_PER_IP: '3',
    SHUTDOWN_TIMEOUT_MS: '3000'
  }
  const a = await startGateway(t, { ...env, PORT: String(portA) })
  const b = await startGateway(t, { ...env, PORT: String(portB) })
  await waitForStatus(`${a.url}/ready`, 200)
  await waitForStatus(`${b.url}/ready`, 200)
  const base = await front.proxy()
  const wsUrl = `wss://127.0.0.1:${listen}/ws`
  const ca = certs.ca

  t.equal((await httpsRequest(`${base}/ready`, ca)).status, 200, '/ready through the proxy')
  t.equal((await httpsRequest(`${base}/metrics`, ca)).status, 404, '/metrics is not exposed by the proxy')
  t.equal((await fetch(`${a.url}/alerts`, { method: 'POST' })).status, 403, 'the instance refuses a request not forwarded as https')

  // Clients spread over both instances (least_conn).
  const users = ['u1', 'u2', 'u3', 'u4']
  const clients = new Map<string, TestClient>()
  for (const [i, user] of users.entries()) {
    const { client } = await TestClient.connect(wsUrl, { token: userToken(user), ca, localAddress: `127.0.0.${31 + (i % 2)}` })
    clients.set(user, client)
  }
  const [onA, onB] = await Promise.all([activeOn(a), activeOn(b)])
  t.equal(onA + onB, 4)
  t.ok(onA > 0 && onB > 0, `clients spread over both instances (${onA} + ${onB})`)

  // The per-IP limit sees the real client address, not nginx's.
  const limited: TestClient[] = []
  for (let i = 0; i < 3; i++) limited.push((await TestClient.connect(wsUrl, { token: userToken(`ip-${i}`), ca, localAddress: '127.0.0.41' })).client)
  t.equal((await TestClient.refused(wsUrl, { token: userToken('ip-3'), ca, localAddress: '127.0.0.41' })).status, 429, 'the 4th socket from 127.0.0.41 is refused')
  const other = (await TestClient.connect(wsUrl, { token: userToken('ip-other'), ca, localAddress: '127.0.0.42' })).client
  t.ok(other, 'while 127.0.0.42 is accepted')
  await Promise.all([...limited, other].map((c) => c.close()))

  const svc = serviceToken()
  const publishVia = (title: string): ReturnType<typeof httpsRequest> => httpsRequest(`${base}/alerts`, ca, {
    method: 'POST',
    headers: { authorization: `Bearer ${svc}`, 'content-type': 'application/json' },
    body: JSON.stringify({ target: { all: true }, severity: 'info', title })
  })
  t.equal((await publishVia('first')).status, 202)
  for (const client of clients.values()) t.equal((await client.next('alert')).title, 'first')

  // SIGTERM one instance: its clients get 1001 and reconnect through nginx.
  const onADrained = await activeOn(a)
  a.child.kill('SIGTERM')
  t.equal((await a.exited).code, 0, 'the stopped instance exits 0 once its sockets are closed')
  const moved = [...clients.entries()].filter(([, client]) => client.ws.readyState === client.ws.CLOSED)
  t.equal(moved.length, onADrained, 'every client of the stopped instance was closed')
  for (const [user, client] of moved) {
    t.equal((await client.closed).code, 1001, `${user} got 1001`)
    const { client: again } = await TestClient.connect(wsUrl, { token: userToken(user), ca })
    clients.set(user, again)
  }
  t.equal(await activeOn(b), 4, 'everyone is on the other instance')
  t.equal((await publishVia('second')).status, 202)
  for (const client of clients.values()) t.equal((await client.next('alert')).title, 'second')
})
