import { randomUUID } from 'node:crypto'
import { existsSync, mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { devSecretEnv, testConfig } from '../helpers/config.js'
import { freePort } from '../helpers/free-port.js'
import { publish, waitForStatus } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { waitUntil } from '../helpers/timeout.js'
import { serviceToken } from '../helpers/tokens.js'

// The demo page exists only on a generated development secret.
const DEV_ENV = devSecretEnv(t.testdir())

// Launching Chromium takes a while on a busy machine.
t.setTimeout(120_000)

const CHROMIUM = '/usr/bin/chromium'
const SCREENSHOT = fileURLToPath(new URL('../../test-output/demo.png', import.meta.url))
const XSS_TITLE = '<img src=x onerror="window.__xss=1">'

/** Upgrade attempts that reached the gateway, whatever their outcome. */
async function upgradesSeen (url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text()
  return text.split('\n')
    .filter((line) => line.startsWith('ws_connections_total{'))
    .reduce((sum, line) => sum + Number(line.split(' ')[1]), 0)
}

async function gateway (port: number, listen: boolean, env: Record<string, string> = {}): Promise<FastifyInstance> {
  const app = await buildApp(testConfig({ ...DEV_ENV, ...env }), { defaultMetrics: false })
  t.teardown(() => app.close())
  if (listen) await app.listen({ host: '127.0.0.1', port })
  else await app.ready()
  return app
}

t.test('the demo page in Chromium', {
  skip: existsSync(CHROMIUM) ? false : `no browser at ${CHROMIUM}: install Debian's chromium (apt-get install chromium) to run the browser tests`
}, async (t) => {
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  let app = await gateway(port, true)
  const svc = serviceToken('svc', {}, app.gatewayConfig.jwt.key)

  const { chromium } = await import('playwright-core')
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']
  })
  t.teardown(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1000, height: 1000 } })
  const pageErrors: string[] = []
  page.on('pageerror', (error) => pageErrors.push(error.message))
  let sockets = 0
  page.on('websocket', () => { sockets++ })
  // The page's modules as the browser fetched them (from the build: dist/client, dist/protocol).
  const modules = new Map<string, number>()
  page.on('response', (response) => {
    const { pathname } = new URL(response.url())
    if (pathname.endsWith('.js')) modules.set(pathname, response.status())
  })

  const sub = `browser-${randomUUID().slice(0, 8)}`
  const state = async (value: string, timeout = 10000): Promise<void> => {
    await page.waitForSelector(`#state[data-state="${value}"]`, { timeout })
  }
  const alertTitles = async (): Promise<string[]> => page.$$eval('#alerts li .title', (items) => items.map((i) => i.textContent ?? ''))

  await t.test('the page logs in and connects', async (t) => {
    await page.goto(base)
    await page.fill('#sub', sub)
    await page.click('#login-button')
    await state('open')
    t.match(await page.textContent('#user'), sub)
    t.equal(sockets, 1, 'one WebSocket')
    t.equal(modules.get('/client/demo/app.js'), 200, 'the page script')
    t.equal(modules.get('/protocol/close-codes.js'), 200, 'the wire contract, imported by the client as ../protocol/')
    t.same([...modules.values()].filter((status) => status !== 200), [], 'every module loaded')
  })

  await t.test('an alert published over REST appears, in its severity colour', async (t) => {
    const answer = await publish(base, svc, { target: { userId: sub }, severity: 'warning', title: 'Disk almost full', body: 'db-1 is at 92%' })
    t.equal(answer.status, 202)
    await page.waitForSelector(`#alerts li[data-id="${String(answer.body.id)}"]`, { timeout: 5000 })
    t.same(await alertTitles(), ['Disk almost full'])
    t.equal(await page.getAttribute('#alerts li', 'class'), 'alert severity-warning')
    t.equal(await page.textContent('#alerts li .body'), 'db-1 is at 92%')
  })

  await t.test('markup in an alert is shown as text and runs nothing', async (t) => {
    // Published through the page's own form: a service token from /dev/token, then POST /alerts.
    await page.selectOption('#severity', 'critical')
    await page.selectOption('#target', 'me')
    await page.fill('#title', XSS_TITLE)
    await page.click('#publish-button')
    await page.waitForFunction(() => document.querySelectorAll('#alerts li').length === 2, undefined, { timeout: 5000 })
    t.match(await page.textContent('#publish-result'), /^202 \{"id":/)
    t.same(await alertTitles(), [XSS_TITLE, 'Disk almost full'], 'the title is the literal text, newest first')
    t.equal(await page.getAttribute('#alerts li', 'class'), 'alert severity-critical')
    t.equal(await page.evaluate(() => document.querySelectorAll('img').length), 0, 'no img element exists')
    t.equal(await page.evaluate(() => (window as unknown as { __xss?: number }).__xss), undefined, 'no handler ran')
    mkdirSync(dirname(SCREENSHOT), { recursive: true })
    await page.screenshot({ path: SCREENSHOT, fullPage: true })
    t.ok(existsSync(SCREENSHOT), `screenshot with two alerts: ${SCREENSHOT}`)
  })

  await t.test('the page reconnects by itself when the gateway stops and starts again', async (t) => {
    const next = await gateway(port, false)
    await app.close()
    await state('reconnecting')
    await next.listen({ host: '127.0.0.1', port })
    app = next
    await state('open', 20000)
    t.equal(app.sessions.size, 1, 'connected to the new instance')
    // The in-process history went with the old instance: the resume could not recover.
    await page.waitForSelector('#gap-notice', { state: 'visible', timeout: 5000 })
    t.match(await page.textContent('#gap-notice'), 'Some alerts may be missing')
    const answer = await publish(base, svc, { target: { all: true }, severity: 'info', title: 'Back after the restart' })
    await page.waitForSelector(`#alerts li[data-id="${String(answer.body.id)}"]`, { timeout: 5000 })
    t.equal((await alertTitles())[0], 'Back after the restart')
  })

  await t.test('logout stops the page from reconnecting', async (t) => {
    const socketsBefore = sockets
    const upgradesBefore = await upgradesSeen(base)
    await page.click('#logout')
    await state('logged-out')
    t.match(await page.textContent('#state'), 'logged-out (close code 4403)')
    // A reconnect would come within the first backoff step (0.5 s at most): wait three times that.
    await new Promise((resolve) => setTimeout(resolve, 1500))
    t.equal(sockets, socketsBefore, 'the page opened no other WebSocket')
    t.equal(await upgradesSeen(base), upgradesBefore, 'no upgrade attempt reached the gateway')
    t.equal(app.sessions.size, 0)
    t.equal(await page.getAttribute('#state', 'data-state'), 'logged-out', 'still logged out')
  })

  await t.test('on a Redis-backed gateway', async (t) => {
    const redis = await RedisServer.start(t)
    const redisPort = await freePort()
    const redisBase = `http://127.0.0.1:${redisPort}`
    const redisApp = await gateway(redisPort, true, { REDIS_URL: redis.url, MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000' })
    await waitForStatus(`${redisBase}/ready`, 200)
    const svc = serviceToken('svc', {}, redisApp.gatewayConfig.jwt.key)
    const pageOf = async (sub: string): Promise<typeof page> => {
      const opened = await browser.newPage()
      opened.on('pageerror', (error) => pageErrors.push(error.message))
      await opened.goto(redisBase)
      await opened.fill('#sub', sub)
      await opened.click('#login-button')
      await opened.waitForSelector('#state[data-state="open"]', { timeout: 10000 })
      return opened
    }
    const shown = async (on: typeof page): Promise<Array<{ id: string, replay: boolean, badge: boolean }>> => on.$$eval('#alerts li', (items) => items.map((i) => ({
      id: (i as HTMLElement).dataset.id ?? '',
      replay: (i as HTMLElement).dataset.replay === 'true',
      badge: i.querySelector('.replayed')?.textContent === 'replayed'
    })))
    const reader = `reader-${randomUUID().slice(0, 8)}`
    const readerPage = await pageOf(reader)

    await t.test('a reload resumes: what was published meanwhile arrives once, marked replayed', async (t) => {
      const live = await publish(redisBase, svc, { target: { userId: reader }, severity: 'info', title: 'before the reload' })
      await readerPage.waitForSelector(`#alerts li[data-id="${String(live.body.id)}"]`, { timeout: 5000 })
      t.same(await shown(readerPage), [{ id: live.body.id, replay: false, badge: false }], 'a live alert has no badge')
      const missed: string[] = []
      // The page's script is held until the old socket is gone and three alerts went by.
      await readerPage.route('**/client/demo/app.js', async (route) => {
        await waitUntil(() => redisApp.sessions.size === 0, 5000, 'the old page\'s socket to close')
        for (const target of [{ userId: reader }, { all: true }, { userId: reader }]) {
          missed.push(String((await publish(redisBase, svc, { target, severity: 'warning', title: 'while reloading' })).body.id))
        }
        await route.continue()
      })
      await readerPage.reload()
      await readerPage.waitForSelector('#state[data-state="open"]', { timeout: 10000 })
      await readerPage.unroute('**/client/demo/app.js')
      await readerPage.waitForFunction(() => document.querySelectorAll('#alerts li').length >= 3, undefined, { timeout: 5000 })
      await readerPage.waitForSelector('#resume-status:has-text("nothing missing")', { timeout: 5000 })
      const after = await shown(readerPage)
      t.same(after.map((a) => a.id).sort(), [...missed].sort(), 'every alert published during the reload, once; the one shown before is not replayed')
      t.ok(after.every((a) => a.replay && a.badge), 'each marked replayed')
      t.match(await readerPage.textContent('#resume-status'), 'Resumed: 3 alert(s) replayed, nothing missing')
      t.ok(await readerPage.isHidden('#gap-notice'), 'no gap notice')
      t.match(await readerPage.textContent('#user'), reader, 'logged in again by itself')
    })

    await t.test('a Redis restart without persistence: a gap notice on the open page and on a page that resumes afterwards', async (t) => {
      const away = `away-${randomUUID().slice(0, 8)}`
      const awayPage = await pageOf(away)
      await awayPage.goto('about:blank')
      await waitUntil(() => redisApp.sessions.size === 1, 5000, 'the other page\'s socket to close')

      await redis.stop()
      await redis.start()
      await readerPage.waitForSelector('#gap-notice[data-streams="all user"]', { state: 'visible', timeout: 30000 })
      t.match(await readerPage.textContent('#gap-notice'), 'Some alerts may be missing (broadcasts and your own alerts)')
      t.equal(await readerPage.getAttribute('#state', 'data-state'), 'open', 'the page stayed connected')

      await waitForStatus(`${redisBase}/ready`, 200)
      await awayPage.goto(redisBase)
      await awayPage.waitForSelector('#gap-notice', { state: 'visible', timeout: 10000 })
      t.match(await awayPage.textContent('#resume-status'), 'some may be missing')
      t.equal(await awayPage.getAttribute('#gap-notice', 'data-streams'), 'all user')
      t.equal(await awayPage.getAttribute('#gap-notice', 'data-testid'), 'gap-notice')
    })
  })

  t.same(pageErrors, [], 'no script error on the page')
})
