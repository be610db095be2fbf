import t from 'tap'
import { copyFileSync, rmSync } from 'node:fs'
import { request } from 'node:https'
import { build } from '../helpers/build.js'
import { makeCerts } from '../helpers/certs.js'
import { spawnGateway, startGateway } from '../helpers/gateway-process.js'
import { userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

async function headersOf (url: string, ca: Buffer): Promise<Record<string, string | string[] | undefined>> {
  return new Promise((resolve, reject) => {
    request(url, { ca }, (res) => {
      res.resume()
      resolve(res.headers)
    }).on('error', reject).end()
  })
}

t.test('TLS served directly', async (t) => {
  const certs = makeCerts(t.testdir())
  const env = { TLS_CERT_FILE: certs.certFile, TLS_KEY_FILE: certs.keyFile }
  const { port } = await build(t, { env })
  const wss = `wss://127.0.0.1:${port}/ws`

  const { client, welcome } = await TestClient.connect(wss, { token: userToken('tls-user'), ca: certs.ca })
  t.equal(welcome.userId, 'tls-user', 'wss with a throwaway CA works')
  await client.close()

  await t.rejects(TestClient.open(`ws://127.0.0.1:${port}/ws`, { token: userToken('plain') }), 'plain ws to the TLS port fails')
  await t.rejects(TestClient.open(wss, { token: userToken('untrusted') }), 'a client that does not trust the CA fails')

  const headers = await headersOf(`https://127.0.0.1:${port}/health`, certs.ca)
  t.equal(headers['x-content-type-options'], 'nosniff')
  t.notOk(headers['x-powered-by'])
  t.match(headers['content-security-policy'], /connect-src 'self' wss:\/\/127\.0\.0\.1:\d+/, 'CSP allows only self and the wss origin')
  t.notMatch(headers['content-security-policy'], /ws:\/\//, 'no ws: from an https page')
})

t.test('production headers: HSTS and CSP', async (t) => {
  const certs = makeCerts(t.testdir())
  const { port } = await build(t, {
    env: { NODE_ENV: 'production', SINGLE_INSTANCE: 'true', TLS_CERT_FILE: certs.certFile, TLS_KEY_FILE: certs.keyFile }
  })
  const headers = await headersOf(`https://127.0.0.1:${port}/health`, certs.ca)
  t.match(headers['strict-transport-security'], /max-age=31536000; includeSubDomains/)
  t.match(headers['content-security-policy'], /default-src 'self'/)
  t.match(headers['content-security-policy'], /connect-src 'self' wss:\/\/127\.0\.0\.1:\d+/)
})

t.test('a development page served over http may open ws to its own origin only', async (t) => {
  const { url, port } = await build(t)
  const csp = (await fetch(`${url}/health`)).headers.get('content-security-policy')
  t.match(csp, new RegExp(`connect-src 'self' ws://127\\.0\\.0\\.1:${port}`))
  t.equal((await fetch(`${url}/health`)).headers.get('strict-transport-security'), null, 'no HSTS outside production')
})

t.test('production without TLS and without a trusted proxy refuses to start', async (t) => {
  const started = spawnGateway({ NODE_ENV: 'production', REDIS_URL: 'redis://127.0.0.1:1' })
  const { code } = await started.exited
  t.not(code, 0, 'exit code is non-zero')
  const lines = started.output().trim().split('\n')
  t.equal(lines.length, 1, 'one line')
  t.match(lines[0], /TLS_CERT_FILE/, 'naming the variable')
})

t.test('SIGHUP reloads the certificate without dropping open sockets', async (t) => {
  const dir = t.testdir({ old: {}, new: {} })
  const first = makeCerts(`${dir}/old`)
  const second = makeCerts(`${dir}/new`)
  const live = { cert: `${dir}/live.crt`, key: `${dir}/live.key` }
  copyFileSync(first.certFile, live.cert)
  copyFileSync(first.keyFile, live.key)
  const gateway = await startGateway(t, { TLS_CERT_FILE: live.cert, TLS_KEY_FILE: live.key })
  const { client } = await TestClient.connect(gateway.wsUrl, { token: userToken('before-reload'), ca: first.ca })

  copyFileSync(second.certFile, live.cert)
  copyFileSync(second.keyFile, live.key)
  const logged = new Promise<void>((resolve) => {
    gateway.child.stdout?.on('data', () => { if (gateway.output().includes('TLS certificate reloaded')) resolve() })
  })
  gateway.child.kill('SIGHUP')
  await logged
  const { welcome } = await TestClient.connect(gateway.wsUrl, { token: userToken('after-reload'), ca: second.ca })
  t.equal(welcome.userId, 'after-reload', 'new handshakes use the new certificate')
  await t.rejects(TestClient.open(gateway.wsUrl, { token: userToken('old-ca'), ca: first.ca }), 'the old certificate is no longer served')
  client.send({ type: 'ping', id: 'still-here' })
  t.same(await client.next('pong'), { type: 'pong', id: 'still-here' }, 'the socket opened before the reload is still open')

  rmSync(live.key)
  gateway.child.kill('SIGHUP')
  await new Promise<void>((resolve) => {
    const check = (): void => { if (gateway.output().includes('TLS certificate reload failed')) resolve() }
    check()
    gateway.child.stdout?.on('data', check)
  })
  const { welcome: still } = await TestClient.connect(gateway.wsUrl, { token: userToken('after-failure'), ca: second.ca })
  t.equal(still.userId, 'after-failure', 'a failed reload keeps the current certificate')
  // A clean exit, so the child's coverage is written.
  gateway.child.kill('SIGTERM')
  t.equal((await gateway.exited).code, 0)
})
