import { readFileSync } from 'node:fs'
import t from 'tap'
import Fastify from 'fastify'
import { createVerifier } from 'fast-jwt'
import demoRoutes from '../../routes/demo.js'
import { build } from '../helpers/build.js'
import { devSecretEnv } from '../helpers/config.js'
import { userToken } from '../helpers/tokens.js'

t.test('the demo page, its stylesheet and the built client modules are served on the development secret', async (t) => {
  const { url } = await build(t, { env: devSecretEnv(t.testdir()) })
  const page = await fetch(`${url}/`)
  t.equal(page.status, 200)
  t.match(page.headers.get('content-type'), /^text\/html/)
  t.match(page.headers.get('content-security-policy'), /script-src 'self'/, 'under the CSP: no inline script allowed')
  const html = await page.text()
  t.match(html, '<script type="module" src="/client/demo/app.js"></script>')
  t.notMatch(html, /<script(?![^>]*\ssrc=)[^>]*>/, 'no inline script element')

  const css = await fetch(`${url}/demo.css`)
  t.equal(css.status, 200)
  t.match(css.headers.get('content-type'), /^text\/css/)
  t.match(await css.text(), '.severity-critical')

  for (const path of ['/client/index.js', '/client/alert-client.js', '/client/demo/app.js', '/protocol/close-codes.js']) {
    const res = await fetch(url + path)
    t.equal(res.status, 200, path)
    t.match(res.headers.get('content-type'), /^text\/javascript/)
    t.equal(res.headers.get('cache-control'), 'no-cache', 'always the current build')
    const js = await res.text()
    t.notMatch(js, /^import type|: string\)|interface /m, `${path}: types are stripped`)
    const mapName = path.slice(path.lastIndexOf('/') + 1) + '.map'
    t.match(js, `//# sourceMappingURL=${mapName}`, `${path}: with a source map next to it`)

    const map = await fetch(`${url}${path}.map`)
    t.equal(map.status, 200, `${path}.map`)
    t.match(map.headers.get('content-type'), /^application\/json/)
    t.equal(map.headers.get('cache-control'), 'no-cache')
    const { sources, sourcesContent } = await map.json() as { sources: string[], sourcesContent: string[] }
    const source = path.slice(1).replace(/\.js$/, '.ts')
    t.match(sources[0], new RegExp(`/${source}$`), `${path}.map: maps to ${source}`)
    t.equal(sourcesContent[0], readFileSync(new URL(`../../${source}`, import.meta.url), 'utf8'),
      `${path}.map: carries the TypeScript source, which is not served itself`)
  }
  t.match(await (await fetch(`${url}/client/index.js`)).text(), /export function connect\(options\)/)
  // client/ imports the wire contract from ../protocol/: the URL the browser resolves is served.
  t.match(await (await fetch(`${url}/client/protocol.js`)).text(), "from '../protocol/close-codes.js'")
  t.match(await (await fetch(`${url}/protocol/close-codes.js`)).text(), /export const CloseCode/)
})

t.test('nothing else under /client and /protocol: no other file types, no way out of the folder', async (t) => {
  const { url } = await build(t, { env: devSecretEnv(t.testdir()) })
  for (const path of ['/client/index.ts', '/client/demo/index.html', '/client/Index.js', '/client/%2e%2e/src/app.js',
    '/client/..%2fsrc%2fapp.js', '/client/', '/client/missing.js', '/client/demo/missing.js', '/index.html',
    '/client/demo', '/client/index.js.map.js', '/client/index.d.ts', '/client/%2e%2e/routes/demo.js',
    '/protocol/close-codes.ts', '/protocol/', '/protocol/missing.js', '/protocol/%2e%2e/src/app.js', '/protocol/..%2fclient%2findex.js',
    '/src/app.js', '/routes/demo.js', '/dist/client/index.js']) {
    t.equal((await fetch(url + path)).status, 404, path)
  }
})

t.test('without a build, the demo refuses to start and says what to run', async (t) => {
  const distDir = t.testdir()
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => { await app.register(demoRoutes, { distDir }) }, /demo: .*client is missing: run `npm run build` first/)
})

t.test('POST /dev/token mints user and service tokens with the development secret', async (t) => {
  const { app, url } = await build(t, { env: devSecretEnv(t.testdir()) })
  const verify = createVerifier({ key: app.gatewayConfig.jwt.key, algorithms: ['HS256'] })
  const mint = async (body: unknown): Promise<Response> => fetch(`${url}/dev/token`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body)
  })
  const user = verify(((await (await mint({ sub: 'alice' })).json()) as { token: string }).token)
  t.equal(user.sub, 'alice')
  t.notOk('scope' in user)
  t.equal(user.exp - user.iat, 3600)
  const service = verify(((await (await mint({ sub: 'svc', service: true })).json()) as { token: string }).token)
  t.equal(service.scope, 'alerts:publish')
  t.equal((await mint({ sub: 'no spaces' })).status, 400)
  t.equal((await mint({ sub: 'x', admin: true })).status, 400)
})

t.test('not served in production', async (t) => {
  const { url } = await build(t, { env: { NODE_ENV: 'production', SINGLE_INSTANCE: 'true', TRUST_PROXY: '127.0.0.1' } })
  for (const path of ['/', '/demo.css', '/client/index.js', '/client/index.js.map', '/protocol/close-codes.js']) {
    t.equal((await fetch(url + path, { headers: { 'x-forwarded-proto': 'https' } })).status, 404, path)
  }
  const token = await fetch(`${url}/dev/token`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-forwarded-proto': 'https' }, body: '{"sub":"x"}'
  })
  t.equal(token.status, 404)
})

// Regression: with JWT_SECRET set and NODE_ENV unset (development), POST
// /dev/token minted user and service tokens for anyone reaching the port.
t.test('not served with a configured key, in development too', async (t) => {
  for (const env of [{ NODE_ENV: 'development' }, { NODE_ENV: 'test' }]) {
    const { url, wsUrl } = await build(t, { env })
    for (const path of ['/', '/demo.css', '/client/index.js', '/protocol/close-codes.js']) t.equal((await fetch(url + path)).status, 404, `${env.NODE_ENV}: ${path}`)
    const token = await fetch(`${url}/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"sub":"x","service":true}' })
    t.equal(token.status, 404, `${env.NODE_ENV}: POST /dev/token`)
    // The configured key itself works.
    const ws = await fetch(wsUrl.replace('ws:', 'http:'), { headers: { authorization: `Bearer ${userToken('x')}` } })
    t.equal(ws.status, 426, `${env.NODE_ENV}: the gateway is up and takes its key`)
  }
})
