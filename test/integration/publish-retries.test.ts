import t from 'tap'
import { randomUUID } from 'node:crypto'
import { twoInstances, type Built } from '../helpers/build.js'
import { metricValue } from '../helpers/metrics.js'
import { postAlert, type Answer } from '../helpers/publisher.js'
import { alertsOn, deliveryProblems, waitForAlerts, type ExpectedAlert } from '../helpers/received.js'
import { RedisServer } from '../helpers/redis-server.js'
import { serviceToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

const svc = serviceToken()
const replayed = (answer: Answer): boolean => answer.headers.get('idempotent-replayed') === 'true'

interface Setup {
  a: Built
  b: Built
  /** A user on A and a user on B, one session each. */
  users: [string, string]
  clients: [TestClient, TestClient]
}

t.test('POST /alerts with Idempotency-Key on two instances sharing one Redis', { timeout: 60_000 }, async (t) => {
  const redis = await RedisServer.start(t)

  async function prepare (t: Parameters<typeof twoInstances>[0]): Promise<Setup> {
    const [a, b] = await twoInstances(t, redis.url)
    const run = randomUUID().slice(0, 8)
    const users: [string, string] = [`${run}-on-a`, `${run}-on-b`]
    const clients: [TestClient, TestClient] = [await TestClient.connectAs(a.wsUrl, users[0]), await TestClient.connectAs(b.wsUrl, users[1])]
    return { a, b, users, clients }
  }

  /**
   * A broadcast and an alert to both users published after the rest: once a
   * client has them, everything earlier on its two streams has arrived.
   */
  async function publishLast ({ a, users, clients }: Setup): Promise<{ all: ExpectedAlert, user: ExpectedAlert }> {
    const all = await postAlert(a.url, svc, { target: { all: true }, severity: 'info', title: 'last' })
    const user = await postAlert(a.url, svc, { target: { userIds: users }, severity: 'info', title: 'last' })
    for (const client of clients) await waitForAlerts(client, [all.body.id as string, user.body.id as string], 5000, 'the last alerts')
    return { all: { id: all.body.id as string, pos: all.body.pos as string }, user: { id: user.body.id as string } }
  }

  t.test('the same key sent 5 times at once to both instances: one alert, one delivery per session, every answer alike', async (t) => {
    const setup = await prepare(t)
    const { a, b, users, clients } = setup
    const replaysBefore = await metricValue(a.url, 'ws_publish_idempotent_replays_total') + await metricValue(b.url, 'ws_publish_idempotent_replays_total')
    const targets = { all: { all: true }, user: { userId: users[1] }, users: { userIds: users } }
    const firsts: Record<string, Answer> = {}
    for (const [name, target] of Object.entries(targets)) {
      const key = `retry-${name}-${randomUUID()}`
      const body = { target, severity: 'critical', title: `disk full (${name})`, data: { host: 'db-1' } }
      const answers = await Promise.all([0, 1, 2, 3, 4].map((i) => postAlert(i % 2 === 0 ? a.url : b.url, svc, body, { key, timeoutMs: 40_000 })))
      t.same(answers.map((answer) => answer.status), [202, 202, 202, 202, 202], `${name}: every repeat is accepted`)
      const first = answers.filter((answer) => !replayed(answer))
      t.equal(first.length, 1, `${name}: one answer published, the other four say Idempotent-Replayed: true`)
      t.equal(first[0]?.headers.get('idempotent-replayed'), null, `${name}: the publishing answer has no replay header`)
      const where = (answer: Answer): unknown => ({ id: answer.body.id, stream: answer.body.stream, pos: answer.body.pos })
      t.same(answers.map(where), answers.map(() => where(answers[0])), `${name}: the same id, stream and pos in every answer`)
      firsts[name] = first[0]
    }
    t.match(firsts.all.body, { stream: 'all', pos: /:\d+$/ })
    t.match(firsts.user.body, { stream: 'user', pos: /:\d+$/, delivered: 1 }, 'the user on B counted from wherever it was published')
    t.notOk('pos' in firsts.users.body, 'userIds: no single position')
    t.equal(firsts.users.body.delivered, 2, 'userIds: both sessions, one on each instance')
    const replaysAfter = await metricValue(a.url, 'ws_publish_idempotent_replays_total') + await metricValue(b.url, 'ws_publish_idempotent_replays_total')
    t.equal(replaysAfter - replaysBefore, 12, 'ws_publish_idempotent_replays_total counts the 12 repeats')

    const last = await publishLast(setup)
    const id = (name: string): string => firsts[name].body.id as string
    t.same(deliveryProblems(clients[0], {
      all: [{ id: id('all'), pos: firsts.all.body.pos as string }, last.all],
      user: [{ id: id('users') }, last.user]
    }), [], 'on A: the broadcast and its userIds alert, once each')
    t.same(deliveryProblems(clients[1], {
      all: [{ id: id('all'), pos: firsts.all.body.pos as string }, last.all],
      user: [{ id: id('user'), pos: firsts.user.body.pos as string }, { id: id('users') }, last.user]
    }), [], 'on B: the broadcast, its alert and its userIds alert, once each')
  })

  t.test('a repeat is the same body after sanitising; another body with the key is 422 and publishes nothing', async (t) => {
    const setup = await prepare(t)
    const { a, b, users, clients } = setup
    const key = `conflict-${randomUUID()}`
    const body = { target: { userId: users[0] }, severity: 'warning', title: 'cpu high' }
    const first = await postAlert(a.url, svc, body, { key })
    t.equal(first.status, 202)
    const same = await postAlert(b.url, svc, { ...body, title: 'cpu\u0007 high\u202e' }, { key })
    t.equal(same.status, 202, 'control and bidi characters are stripped before comparing')
    t.ok(replayed(same))
    t.equal(same.body.id, first.body.id)
    for (const [name, other] of Object.entries({
      title: { ...body, title: 'cpu low' },
      severity: { ...body, severity: 'critical' },
      target: { ...body, target: { userId: users[1] } },
      body: { ...body, body: 'more' }
    })) {
      const answer = await postAlert(name.length % 2 === 0 ? a.url : b.url, svc, other, { key })
      t.equal(answer.status, 422, `another ${name} with the same key: 422`)
      t.notOk(replayed(answer))
    }
    const last = await publishLast(setup)
    t.same(deliveryProblems(clients[0], { all: [last.all], user: [{ id: first.body.id as string, pos: first.body.pos as string }, last.user] }), [], 'the alert once, nothing of the refused bodies')
    t.same(deliveryProblems(clients[1], { all: [last.all], user: [last.user] }), [], 'nothing for the other user')
  })

  t.test('a malformed key is 400 and publishes nothing; 1 and 255 visible characters are accepted', async (t) => {
    const setup = await prepare(t)
    const { a, b, users, clients } = setup
    const body = { target: { userId: users[1] }, severity: 'info', title: 'keyed' }
    const malformed = {
      empty: '',
      '256 characters': 'k'.repeat(256),
      'a space': 'two words',
      'a tab': 'two\twords',
      'a Latin-1 letter': 'caf\u00e9',
      'UTF-8 bytes': Buffer.from('snow\u2603', 'utf8').toString('latin1')
    }
    for (const [name, key] of Object.entries(malformed)) {
      const answer = await postAlert(a.url, svc, body, { key })
      t.equal(answer.status, 400, `${name}: 400`)
    }
    const accepted: ExpectedAlert[] = []
    for (const key of ['!', '~'.repeat(255), `${randomUUID()}:"quoted";{}`]) {
      const answer = await postAlert(b.url, svc, body, { key })
      t.equal(answer.status, 202, `${key.length} visible characters: 202`)
      accepted.push({ id: answer.body.id as string, pos: answer.body.pos as string })
    }
    const last = await publishLast(setup)
    t.same(deliveryProblems(clients[1], { all: [last.all], user: [...accepted, last.user] }), [], 'only the well-keyed alerts arrive')
    t.same(alertsOn(clients[0], 'user').map((f) => f.id), [last.user.id], 'nothing for the other user')
  })

  t.test('keys are scoped to the service: another service with the same key and body publishes its own alert', async (t) => {
    const setup = await prepare(t)
    const { a, b, clients } = setup
    const key = `shared-${randomUUID()}`
    const body = { target: { all: true }, severity: 'info', title: 'deploy done' }
    const one = await postAlert(a.url, serviceToken('svc-one'), body, { key })
    const two = await postAlert(b.url, serviceToken('svc-two'), body, { key })
    t.equal(one.status, 202)
    t.equal(two.status, 202)
    t.notOk(replayed(two), 'not a replay of the other service\'s alert')
    t.not(two.body.id, one.body.id, 'its own alert')
    const again = await postAlert(b.url, serviceToken('svc-one'), body, { key })
    t.ok(replayed(again), 'the first service\'s repeat is still a replay')
    t.equal(again.body.id, one.body.id)
    const last = await publishLast(setup)
    for (const client of clients) {
      t.same(deliveryProblems(client, {
        all: [{ id: one.body.id as string, pos: one.body.pos as string }, { id: two.body.id as string, pos: two.body.pos as string }, last.all]
      }), [], 'both alerts, once each')
    }
  })
})
