import t from 'tap'
import { DRAIN_CLOSES_PER_SECOND } from '../../../src/session/drain.js'
import type { Session } from '../../../src/session/session.js'
import { build } from '../../helpers/build.js'
import { userToken } from '../../helpers/tokens.js'
import { TestClient } from '../../helpers/ws-client.js'

t.test('a drain closes a few sessions at once and spreads many, oldest first, every one with 1001', async (t) => {
  // 400 sessions at DRAIN_CLOSES_PER_SECOND: spread over 400 ms, in 20 ms ticks.
  const count = 400
  t.ok(count / DRAIN_CLOSES_PER_SECOND * 1000 >= 200, 'enough sessions for a spread of 10 ticks or more')
  const gw = await build(t, { env: { SHUTDOWN_TIMEOUT_MS: '10000', MAX_CONNECTIONS_PER_IP: '1000' } })
  const clients: TestClient[] = []
  for (let i = 0; i < count; i++) clients.push((await TestClient.connect(gw.wsUrl, { token: userToken(`drain-${i}`) })).client)
  const registered = gw.app.sessions.snapshot().map((s) => s.userId)
  t.same(registered, clients.map((_, i) => `drain-${i}`), 'registered in connection order')

  const batches: string[][] = []
  const closeSome = gw.app.sessions.closeSome.bind(gw.app.sessions)
  gw.app.sessions.closeSome = (batch: readonly Session[], code) => {
    if (batch.length > 0) batches.push(batch.map((s) => s.userId))
    closeSome(batch, code)
  }
  const closes = clients.map((c) => c.waitClosed(15_000))
  await gw.app.close()
  t.same((await Promise.all(closes)).map((c) => c.code), new Array(count).fill(1001), 'every session closed with 1001')
  // Only a stall of the whole spread (400 ms) would put them in one batch.
  t.ok(batches.length >= 2, `closed in ${batches.length} batches, not at once`)
  t.same(batches.flat(), registered, 'each session once, oldest first')
})

t.test('a drain of a few sessions closes them at once', async (t) => {
  const gw = await build(t, { env: { SHUTDOWN_TIMEOUT_MS: '10000' } })
  const { client } = await TestClient.connect(gw.wsUrl, { token: userToken('drain-one') })
  let spread = false
  gw.app.sessions.closeSome = () => { spread = true }
  const closed = client.waitClosed(5000)
  await gw.app.close()
  t.equal((await closed).code, 1001)
  t.notOk(spread, 'no spread for one session')
})
