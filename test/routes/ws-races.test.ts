import t from 'tap'
import type { Socket } from 'node:net'
import WebSocket from 'ws'
import type { Position } from '../../protocol/position.js'
import { build } from '../helpers/build.js'
import { nowSec, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

// Races of the cluster, ordered by hand through the app's own objects.

t.test('a connection overtaken by a newer claim before it completed is closed with 4409', async (t) => {
  const { app, wsUrl } = await build(t)
  await app.claims.claim('racer', null, async () => {})
  app.claims.apply('racer', { type: 'claim', generation: 50 })
  const { client } = await TestClient.connect(wsUrl, { token: userToken('racer') })
  t.equal((await client.waitClosed()).code, 4409)
  app.claims.release('racer')
})

t.test('a session whose announcement fails stays open (the claim is already taken)', async (t) => {
  const { app, wsUrl } = await build(t, { captureLogs: 'warn' })
  app.cluster.broker.publish = async () => { throw new Error('bus down') }
  const { client } = await TestClient.connect(wsUrl, { token: userToken('quiet') })
  client.send({ type: 'ping', id: 1 })
  t.same(await client.next('pong'), { type: 'pong', id: 1 })
})

t.test('a client gone while its claim was pending leaves no slot behind', async (t) => {
  const { app, wsUrl } = await build(t, { env: { MAX_CONNECTIONS_PER_IP: '1' } })
  const original = app.claims.claim.bind(app.claims)
  let reached!: () => void
  let proceed!: () => void
  const atClaim = new Promise<void>((resolve) => { reached = resolve })
  const gate = new Promise<void>((resolve) => { proceed = resolve })
  app.claims.claim = async <T>(userId: string, from: Position | null, read: () => Promise<T>) => {
    reached()
    await gate
    return await original(userId, from, read)
  }
  let serverSide: Socket | undefined
  app.server.once('upgrade', (_req: unknown, socket: Socket) => { serverSide = socket })
  const leaver = new WebSocket(TestClient.url(wsUrl, userToken('leaver')))
  leaver.on('error', () => {})
  await atClaim
  t.equal(app.lifecycle.pendingHandshakes, 1, 'the upgrade waits at its claim')
  // The connection breaks (a reset) while the claim is pending.
  serverSide?.destroy()
  await new Promise((resolve) => serverSide?.once('close', resolve))
  t.equal(app.lifecycle.pendingHandshakes, 0, 'the pending handshake is settled on close')
  app.claims.claim = original
  proceed()
  // The address slot the leaver took is free again, so the only allowed
  // connection of 127.0.0.1 can be made.
  const { welcome } = await TestClient.connect(wsUrl, { token: userToken('stayer') })
  t.equal(welcome.userId, 'stayer')
})

t.test('a claim that fails while the address slot was taken answers 503 and frees the slot', async (t) => {
  const { app, wsUrl } = await build(t, { env: { MAX_CONNECTIONS_PER_IP: '1' } })
  const original = app.claims.claim.bind(app.claims)
  app.claims.claim = async () => { throw new Error('bus down') }
  t.equal((await TestClient.refused(wsUrl, { token: userToken('unclaimed') })).status, 503)
  app.claims.claim = original
  const { client, welcome } = await TestClient.connect(wsUrl, { token: userToken('unclaimed') })
  t.equal(welcome.userId, 'unclaimed', 'the only slot of the address was given back')
  await client.close()
})

// Regression (logout race): a logout between the revocation check in
// onRequest and the session's registration used to leave the session open.
t.test('a logout stored before the claim refuses the upgrade with 403 (read again after subscribing)', async (t) => {
  const { app, wsUrl } = await build(t)
  const original = app.claims.claim.bind(app.claims)
  app.claims.claim = async <T>(userId: string, from: Position | null, read: () => Promise<T>) => {
    // The logout lands after the onRequest check, before the claim.
    await app.cluster.revocations.revoke(userId, nowSec(), 60)
    return await original(userId, from, read)
  }
  t.equal((await TestClient.refused(wsUrl, { token: userToken('late-logout') })).status, 403)
  t.equal(app.claims.loggedOutSince('late-logout', 0), false, 'the refused claim was released')
})

t.test('a logout seen after the claim closes the new session with 4403 as soon as it is registered', async (t) => {
  const { app, wsUrl } = await build(t)
  const original = app.claims.claim.bind(app.claims)
  app.claims.claim = async <T>(userId: string, from: Position | null, read: () => Promise<T>) => {
    const claim = await original(userId, from, read)
    // The logout event arrives while the 101 is on its way.
    app.claims.apply(userId, { type: 'logout', before: nowSec() })
    return claim
  }
  const client = await TestClient.open(wsUrl, { token: userToken('in-flight') })
  t.equal((await client.waitClosed()).code, 4403)
})
