import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { parsePosition, type Position } from '../../../protocol/position.js'
import { ALL_TOPIC, userTopic } from '../../../src/cluster/broker.js'
import { MemoryClaimStore, RedisClaimStore } from '../../../src/cluster/claim-store.js'
import { historyMessage, readHistoryMessage, type HistoryLimits, type HistoryStore, type StreamOwner, type StreamRead } from '../../../src/cluster/history-store.js'
import { MemoryHistoryStore } from '../../../src/cluster/memory-history-store.js'
import { RedisHistoryStore } from '../../../src/cluster/redis-history-store.js'
import { MemoryRevocationStore, RedisRevocationStore } from '../../../src/cluster/revocation-store.js'
import calculateSlot from 'cluster-key-slot'
import { RedisServer } from '../../helpers/redis-server.js'
import { waitUntil } from '../../helpers/timeout.js'

/** A message handed to the instances following a stream, as they receive it. */
interface Handed {
  topic: string
  message: Buffer
}

/** One store under test, whichever the bus. */
interface Bus {
  store: HistoryStore
  /** Every message handed over, in the order the followers got them. */
  handed: Handed[]
  /** History is lost (in-process restart, Redis without persistence): a new epoch follows. */
  loseHistory: () => Promise<void>
  /** Whether the stream's entries are gone from the backing store (Redis: the key expired). */
  entriesGone: (owner: StreamOwner) => Promise<boolean>
  /** A user's stream as the claim's step reads it (the /ws handshake's read), beside store.read(). */
  claimRead: (userId: string, from: Position | null) => Promise<StreamRead>
}

type BusName = 'memory' | 'redis'
type MakeBus = (t: Test, limits: HistoryLimits) => Promise<Bus>

const ORIGIN = Buffer.from('o'.repeat(16))
const LIMITS: HistoryLimits = { maxEntries: 3, retentionMs: 60_000 }
const topicOf = (owner: StreamOwner): string => owner === null ? ALL_TOPIC : userTopic(owner)

function memoryBus (_t: Test, limits: HistoryLimits): Promise<Bus> {
  const handed: Handed[] = []
  const deliver = (topic: string, message: Buffer): void => { handed.push({ topic, message }) }
  const bus: Bus = {
    store: new MemoryHistoryStore(limits, deliver),
    handed,
    loseHistory: async () => { bus.store = new MemoryHistoryStore(limits, deliver) },
    entriesGone: async () => true,
    claimRead: async (userId, from) => (await new MemoryClaimStore(new MemoryRevocationStore(), bus.store).claim(userId, from)).user as StreamRead
  }
  return Promise.resolve(bus)
}

/** Stores on one private redis-server, each under its own key prefix. */
interface RedisBus extends Bus {
  command: Redis
  prefix: string
}

function redisBuses (server: RedisServer): (t: Test, limits: HistoryLimits) => Promise<RedisBus> {
  let count = 0
  return async (t, limits) => {
    const prefix = `h${++count}:`
    const command = new Redis(server.url)
    const subscriber = new Redis(server.url)
    t.teardown(() => { command.disconnect(); subscriber.disconnect() })
    const handed: Handed[] = []
    subscriber.on('pmessageBuffer', (_pattern: Buffer, channel: Buffer, message: Buffer) => {
      const origin = message.subarray(0, ORIGIN.length)
      if (!origin.equals(ORIGIN)) throw new Error(`message without the origin: ${message.toString()}`)
      handed.push({ topic: channel.toString().slice(prefix.length), message: message.subarray(ORIGIN.length) })
    })
    await subscriber.psubscribe(`${prefix}*`)
    const store = new RedisHistoryStore({
      redis: command,
      prefix,
      limits,
      channelOf: (topic) => `${prefix}${topic}`,
      origin: ORIGIN,
      topicOf
    })
    const claims = new RedisClaimStore(command, prefix, new RedisRevocationStore(command, prefix), 'inst', store)
    return {
      command,
      prefix,
      store,
      handed,
      claimRead: async (userId, from) => (await claims.claim(userId, from)).user as StreamRead,
      loseHistory: async () => { await command.flushall() },
      entriesGone: async (owner) => await command.exists(owner === null ? `${prefix}all-hist:{all}` : `${prefix}hist:{${owner}}`) === 0
    }
  }
}

/** The frame the store builds for an alert titled `title` (head + pos + tail). */
const HEAD = (title: string): string => `{"type":"alert","title":"${title}","pos":"`
const TAIL = '"}'

async function append (bus: Bus, owner: StreamOwner, title: string): Promise<{ pos: Position, frame: string }> {
  const { epoch, seq } = await bus.store.append(owner, HEAD(title), TAIL)
  const pos = `${epoch}:${seq}`
  return { pos: { epoch, seq }, frame: `${HEAD(title)}${pos}${TAIL}` }
}

async function seqsAfter (bus: Bus, owner: StreamOwner, from: Position | null): Promise<number[]> {
  return (await bus.store.read(owner, from)).entries.map((entry) => entry.seq)
}

async function handedCount (bus: Bus, n: number): Promise<void> {
  await waitUntil(() => bus.handed.length >= n, 5000, `${n} handed messages`)
}

function storeSuite (t: Test, name: BusName, make: MakeBus): void {
  t.test(`${name}: positions count up by one per append, per stream, and every append is handed over as written`, async (t) => {
    const bus = await make(t, LIMITS)
    const written = []
    written.push({ owner: null, ...await append(bus, null, 'a1') })
    written.push({ owner: 'ann', ...await append(bus, 'ann', 'u1') })
    written.push({ owner: null, ...await append(bus, null, 'a2') })
    written.push({ owner: 'ann', ...await append(bus, 'ann', 'u2') })
    written.push({ owner: 'bob', ...await append(bus, 'bob', 'b1') })
    written.push({ owner: null, ...await append(bus, null, 'a3') })
    t.same(written.map((w) => w.pos.seq), [1, 1, 2, 2, 1, 3], 'each stream counts its own alerts from 1')
    t.equal(new Set(written.filter((w) => w.owner === null).map((w) => w.pos.epoch)).size, 1, 'one epoch per stream')

    await handedCount(bus, written.length)
    t.same(bus.handed.map((h) => h.topic), written.map((w) => topicOf(w.owner)), 'handed to the stream\'s topic, in append order')
    for (let i = 0; i < written.length; i++) {
      const { pos, frame } = written[i]
      const message = bus.handed[i].message
      t.same(message, historyMessage(`${pos.epoch}:${pos.seq}`, Buffer.from(frame)), `message ${i} is the history message of the frame`)
      t.same(readHistoryMessage(message), { pos: `${pos.epoch}:${pos.seq}`, frame: Buffer.from(frame) })
    }
    const all = await bus.store.read(null, { epoch: written[0].pos.epoch, seq: 0 })
    t.same(all.entries.map((e) => e.frame.toString()), written.filter((w) => w.owner === null).map((w) => w.frame), 'history holds the same frames, oldest first')
    t.equal(all.top, 3)
  })

  t.test(`${name}: one alert to many users appends to each user's stream, as append does, results in their order`, async (t) => {
    const bus = await make(t, LIMITS)
    await append(bus, 'u-7', 'before')
    // More users than one Redis script takes (100).
    const users = Array.from({ length: 250 }, (_, i) => `u-${i}`)
    const results = await bus.store.appendMany(users, HEAD('many'), TAIL)
    t.equal(results.length, users.length)
    t.same(results.map((r) => r.seq), users.map((u) => u === 'u-7' ? 2 : 1), 'each stream counts on from its own top')
    await handedCount(bus, users.length + 1)
    const byTopic = new Map(bus.handed.slice(1).map((h) => [h.topic, readHistoryMessage(h.message)]))
    t.equal(byTopic.size, users.length, 'handed once to each user\'s topic')
    for (const i of [0, 7, 99, 100, 249]) {
      const { epoch, seq } = results[i]
      const frame = `${HEAD('many')}${epoch}:${seq}${TAIL}`
      t.same(byTopic.get(topicOf(users[i])), { pos: `${epoch}:${seq}`, frame: Buffer.from(frame) }, `${users[i]}: handed as written`)
      t.same((await bus.store.read(users[i], { epoch, seq: seq - 1 })).entries.map((e) => e.frame.toString()), [frame], `${users[i]}: in its history`)
    }
    t.same(await bus.store.appendMany([], HEAD('none'), TAIL), [], 'no user: nothing')
  })

  t.test(`${name}: a stream never written is given an epoch on read, and appends continue it`, async (t) => {
    const bus = await make(t, LIMITS)
    const head = await bus.store.read('new', null)
    t.same({ top: head.top, entries: head.entries }, { top: 0, entries: [] })
    t.not(parsePosition(`${head.epoch}:0`), null, 'the epoch fits a position')
    t.equal((await bus.store.read('new', null)).epoch, head.epoch, 'stable across reads')
    const first = await append(bus, 'new', 'n1')
    t.same(first.pos, { epoch: head.epoch, seq: 1 }, 'the position handed out at the head stays valid')

    const claimed = await bus.claimRead('fresh', null)
    t.same({ top: claimed.top, entries: claimed.entries }, { top: 0, entries: [] }, 'the claim\'s read gives a stream never written an epoch too')
    t.equal((await bus.store.read('fresh', null)).epoch, claimed.epoch, 'the one read() then gives')
    t.same((await append(bus, 'fresh', 'f1')).pos, { epoch: claimed.epoch, seq: 1 }, 'and appends continue')
  })

  // Both ways a user's stream is read: read(), and the claim's step at a handshake.
  for (const via of ['read', 'claim'] as const) {
    t.test(`${name}: reads from every kind of position (${via})`, async (t) => {
      const bus = await make(t, LIMITS)
      const read = (owner: string, from: Position | null): Promise<StreamRead> => via === 'read' ? bus.store.read(owner, from) : bus.claimRead(owner, from)
      const seqs = async (owner: string, from: Position): Promise<number[]> => (await read(owner, from)).entries.map((entry) => entry.seq)
      const pos = []
      for (let i = 1; i <= 5; i++) pos.push((await append(bus, 'ann', `u${i}`)).pos)
      const epoch = pos[0].epoch

      const head = await read('ann', null)
      t.same({ epoch: head.epoch, top: head.top, entries: head.entries }, { epoch, top: 5, entries: [] }, 'absent: the head only')
      t.same(await seqs('ann', { epoch, seq: 5 }), [], 'current: nothing after it')
      t.same(await seqs('ann', { epoch, seq: 4 }), [5], 'one behind: the newest')
      t.same(await seqs('ann', { epoch, seq: 2 }), [3, 4, 5], 'just before the oldest kept: no hole')
      t.same(await seqs('ann', { epoch, seq: 1 }), [3, 4, 5], 'trimmed: entries start after a hole (2 is gone)')
      t.same(await seqs('ann', { epoch, seq: 0 }), [3, 4, 5], 'start of the epoch: the newest kept')
      t.same(await seqs('ann', { epoch, seq: 9 }), [], 'ahead of the top: nothing')
      const foreign = await read('ann', { epoch: 'other', seq: 4 })
      t.same({ epoch: foreign.epoch, top: foreign.top, seqs: foreign.entries.map((e) => e.seq) }, { epoch, top: 5, seqs: [3, 4, 5] }, 'foreign epoch: the newest entries of the current one')
      t.same(foreign.entries.map((e) => e.frame.toString()), [3, 4, 5].map((seq) => `${HEAD(`u${seq}`)}${epoch}:${seq}${TAIL}`), 'each entry is its frame as written')
      const unknown = await read('ann', { epoch: '-', seq: 0 })
      t.same(unknown.entries.map((e) => e.seq), [3, 4, 5], 'the stand-in for an unknown position reads like a foreign epoch')
      t.same(await seqs('bob', { epoch, seq: 0 }), [], 'another stream shares nothing')
    })
  }

  t.test(`${name}: trimmed by count at every append, oldest first`, async (t) => {
    const bus = await make(t, LIMITS)
    const seen: number[][] = []
    let epoch = ''
    for (let i = 1; i <= 6; i++) {
      epoch = (await append(bus, null, `a${i}`)).pos.epoch
      seen.push(await seqsAfter(bus, null, { epoch, seq: 0 }))
    }
    t.same(seen, [[1], [1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6]])
  })

  t.test(`${name}: entries older than the retention are not returned; a quiet stream keeps its epoch and top`, async (t) => {
    const retentionMs = 300
    const bus = await make(t, { maxEntries: 10, retentionMs })
    const old = await append(bus, 'ann', 'old')
    const oldAt = Date.now()
    await waitUntil(() => Date.now() > oldAt + retentionMs, 5000, 'the first alert to age out')
    const fresh = await append(bus, 'ann', 'fresh')
    const epoch = old.pos.epoch
    t.same(await seqsAfter(bus, 'ann', { epoch, seq: 0 }), [2], 'the aged one is gone, the fresh one kept')
    t.same(await seqsAfter(bus, 'ann', { epoch, seq: 1 }), [2])
    const freshAt = Date.now()
    await waitUntil(() => Date.now() > freshAt + retentionMs, 5000, 'the second alert to age out')
    await waitUntil(() => bus.entriesGone('ann'), 5000, 'the entries to expire')
    const quiet = await bus.store.read('ann', { epoch, seq: 0 })
    t.same({ epoch: quiet.epoch, top: quiet.top, entries: quiet.entries }, { epoch, top: 2, entries: [] }, 'same epoch and top, no entries')
    t.same((await bus.store.read('ann', fresh.pos)).entries, [], 'the last position is still current')
    t.same((await append(bus, 'ann', 'next')).pos, { epoch, seq: 3 }, 'the next alert continues the epoch')
  })

  t.test(`${name}: when history is lost the epoch changes and old positions read as foreign`, async (t) => {
    const bus = await make(t, LIMITS)
    const before = []
    for (let i = 1; i <= 2; i++) before.push((await append(bus, null, `a${i}`)).pos)
    await bus.loseHistory()
    const after = await append(bus, null, 'new')
    t.not(after.pos.epoch, before[0].epoch, 'a new epoch')
    t.equal(after.pos.seq, 1, 'counting from 1 again')
    const read = await bus.store.read(null, before[1])
    t.same({ epoch: read.epoch, top: read.top, seqs: read.entries.map((e) => e.seq) }, { epoch: after.pos.epoch, top: 1, seqs: [1] },
      'an old position gets the new epoch\'s entries, not what follows its seq')
    t.same(read.entries[0].frame.toString(), after.frame)
    const head = await bus.store.read('ann', null)
    t.not(head.epoch, before[0].epoch, 'streams first read after the loss get a new epoch too')
  })
}

storeSuite(t, 'memory', memoryBus)

t.test('redis', async (t) => {
  const server = await RedisServer.start(t)
  const make = redisBuses(server)
  storeSuite(t, 'redis', make)

  t.test('redis: a meta hash lost alone starts a new epoch and drops the stray entries', async (t) => {
    const bus = await make(t, LIMITS)
    const first = await append(bus, 'ann', 'u1')
    await append(bus, 'ann', 'u2')
    t.equal(await bus.command.del(`${bus.prefix}hmeta:{ann}`), 1)
    const next = await append(bus, 'ann', 'u3')
    t.not(next.pos.epoch, first.pos.epoch)
    t.same(await seqsAfter(bus, 'ann', { epoch: next.pos.epoch, seq: 0 }), [1], 'only the new epoch\'s entry')
  })

  t.test('redis: a claim and its read of the user\'s stream are one script', async (t) => {
    const bus = await make(t, LIMITS)
    const { pos } = await append(bus, 'ann', 'u1')
    await bus.claimRead('ann', null)
    const scripts = async (): Promise<number> => {
      const stats = await bus.command.info('commandstats')
      return ['evalsha', 'eval'].reduce((sum, name) => sum + Number(new RegExp(`^cmdstat_${name}:calls=(\\d+)`, 'm').exec(stats)?.[1] ?? 0), 0)
    }
    const before = await scripts()
    const read = await bus.claimRead('ann', { epoch: pos.epoch, seq: 0 })
    t.equal(await scripts() - before, 1, 'one script')
    t.same(read.entries.map((entry) => entry.seq), [1], 'with the entries after the position')

    const revocations = new RedisRevocationStore(bus.command, bus.prefix)
    const claims = new RedisClaimStore(bus.command, bus.prefix, revocations, 'inst', bus.store as RedisHistoryStore)
    t.equal((await claims.claim('ann', null)).revokedBefore, null, 'no revocation read as none')
    await revocations.revoke('ann', 1_700_000_000, 60)
    const claimed = await claims.claim('ann', null)
    t.equal(claimed.revokedBefore, 1_700_000_000, 'and a revocation as its second')
    t.equal(claimed.user?.top, 1, 'beside the read')
  })

  t.test('redis: sharded (Cluster), one alert to many users runs one script per slot, at most 100 users each', async (t) => {
    const command = new Redis(server.url)
    t.teardown(() => { command.disconnect() })
    const prefix = 'sh:'
    const store = new RedisHistoryStore({ redis: command, prefix, limits: LIMITS, channelOf: (topic) => `${prefix}${topic}`, origin: ORIGIN, topicOf, publishCommand: 'SPUBLISH' })
    // 101 users whose keys share one slot, then two of other slots.
    const slot = calculateSlot(`${prefix}hist:{s-0}`)
    const users: string[] = []
    for (let n = 0; users.length < 101; n++) if (calculateSlot(`${prefix}hist:{s-${n}}`) === slot) users.push(`s-${n}`)
    for (let n = 0; users.length < 103; n++) if (calculateSlot(`${prefix}hist:{o-${n}}`) !== slot) users.push(`o-${n}`)
    const scripts = async (): Promise<number> => Number(/cmdstat_evalsha:calls=(\d+)/.exec(await command.info('commandstats'))?.[1] ?? 0)
    await store.appendMany(['warm-up'], HEAD('sharded'), TAIL)
    const before = await scripts()
    const results = await store.appendMany(users, HEAD('sharded'), TAIL)
    t.equal(await scripts() - before, 4, 'the slot\'s 101 users in two scripts (100 + 1), the two others in one each')
    t.same(results.map((r) => r.seq), users.map(() => 1))
    t.same(results.map((r) => r.others), users.map(() => undefined), 'no connection counts without them')
    for (const i of [0, 100, 102]) t.same((await store.read(users[i], { epoch: results[i].epoch, seq: 0 })).entries.map((e) => e.seq), [1], `${users[i]}: in its history`)
  })
})

t.test('only history messages read as one', async (t) => {
  t.equal(readHistoryMessage(Buffer.from('A{"title":"x"}')), null, 'another type byte')
  t.equal(readHistoryMessage(Buffer.from('He:1')), null, 'no frame after the position')
  t.same(readHistoryMessage(Buffer.from('He:1 {"a":"b c"}')), { pos: 'e:1', frame: Buffer.from('{"a":"b c"}') }, 'the first space ends the position')
})
