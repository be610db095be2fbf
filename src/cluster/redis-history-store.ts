import calculateSlot from 'cluster-key-slot'
import type { Redis } from 'ioredis'
import type { Position } from '../../protocol/position.js'
import { taggedKey } from './user-key.js'
import {
  STREAM_META_TTL_MS, newEpoch,
  type AppendRecord, type AppendResult, type HistoryEntry, type HistoryLimits, type HistoryStore, type StreamOwner, type StreamRead
} from './history-store.js'

/**
 * KEYS: stream, meta, the user's connections per instance (the stream again
 * for broadcasts). ARGV: epoch if the stream has none, max entries,
 * retention (ms), meta ttl (ms), now (ms), channel, message prefix, frame
 * head, frame tail, PUBLISH or SPUBLISH (Cluster: the channel is in the
 * keys' slot), idempotency answer head ('' for none) and its id, this
 * instance's id ('' for broadcasts). Returns epoch, seq, PUBLISH's count and
 * the user's connections held by the other instances.
 *
 * The meta hash holds the epoch (`e`) and the top sequence number (`s`). A
 * missing meta means the history is gone (never written, expired, or lost by
 * a Redis without persistence): a new epoch starts and any stray entries go.
 * Entry ids are `<seq>-0`, so positions map to ids without a lookup.
 */
/** One stream's append (see APPEND); `record` empty for none. */
const APPEND_ONE = `
local function append (stream, meta, held, channel, recordHead, recordId)
  local e = redis.call('HGET', meta, 'e')
  if not e then
    redis.call('DEL', stream)
    e = ARGV[1]
    redis.call('HSET', meta, 'e', e)
  end
  local s = redis.call('HINCRBY', meta, 's', 1)
  redis.call('PEXPIRE', meta, ARGV[4])
  local pos = e .. ':' .. s
  local frame = ARGV[8] .. pos .. ARGV[9]
  if recordHead == '' then
    redis.call('XADD', stream, 'MAXLEN', ARGV[2], s .. '-0', 'f', frame, 't', ARGV[5])
  else
    redis.call('XADD', stream, 'MAXLEN', ARGV[2], s .. '-0', 'f', frame, 't', ARGV[5], 'i', recordId, 'a', recordHead .. pos .. '"}')
  end
  redis.call('PEXPIRE', stream, ARGV[3])
  local n = redis.call(ARGV[10], channel, ARGV[7] .. pos .. ' ' .. frame)
  local others = 0
  if ARGV[13] ~= '' then
    local counts = redis.call('HGETALL', held)
    for i = 1, #counts, 2 do
      if counts[i] ~= ARGV[13] then others = others + tonumber(counts[i + 1]) end
    end
  end
  return e, s, n, others
end
`

const APPEND = `${APPEND_ONE}
local e, s, n, others = append(KEYS[1], KEYS[2], KEYS[3], ARGV[6], ARGV[11], ARGV[12])
return {e, s, n, others}
`

/**
 * The same alert to several users' streams of one slot: KEYS are stream,
 * meta and connections of each user in turn, ARGV as APPEND's (ARGV[6],
 * ARGV[11] and ARGV[12] unused), then each user's channel. Returns epoch,
 * seq, PUBLISH's count and the others' connections of each user in turn.
 */
const APPEND_MANY = `${APPEND_ONE}
local out = {}
for i = 1, #KEYS / 3 do
  local e, s, n, others = append(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], ARGV[13 + i], '', '')
  out[#out + 1] = e
  out[#out + 1] = s
  out[#out + 1] = n
  out[#out + 1] = others
end
return out
`

/**
 * One stream's read (see READ): stream, meta, then epoch if the stream has
 * none, the asked epoch ('' for the head only), after seq, max entries,
 * oldest ts kept (ms), meta ttl (ms). Returns epoch, top, then seq and frame
 * of each entry, oldest first. The claim's script runs it too, for the
 * user's stream (RedisClaimStore).
 */
export const READ_STEP = `
local function read (stream, meta, newEpoch, asked, afterSeq, maxEntries, oldestMs, metaTtl)
  local e = redis.call('HGET', meta, 'e')
  if not e then
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', newEpoch, 's', 0)
    redis.call('PEXPIRE', meta, metaTtl)
    return {newEpoch, 0}
  end
  local top = tonumber(redis.call('HGET', meta, 's') or '0')
  local out = {e, top}
  if asked == '' then return out end
  local after = 0
  if asked == e then after = tonumber(afterSeq) end
  if after >= top then return out end
  local entries = redis.call('XREVRANGE', stream, '+', '(' .. after .. '-0', 'COUNT', maxEntries)
  local oldest = tonumber(oldestMs)
  for i = #entries, 1, -1 do
    local fields = entries[i][2]
    if tonumber(fields[4]) >= oldest then
      out[#out + 1] = entries[i][1]
      out[#out + 1] = fields[2]
    end
  end
  return out
end
`

/** KEYS: stream, meta. ARGV: READ_STEP's after its keys. */
const READ = `${READ_STEP}
return read(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
`

/**
 * KEYS: stream. ARGV: record id, oldest ts looked at (ms), the exclusive
 * upper bound (`+` first), entries per call. Scans newest first. Returns
 * {1, answer} when found, {0} when not, {2, last id} to go on.
 */
const FIND = `
local entries = redis.call('XREVRANGE', KEYS[1], ARGV[3], '-', 'COUNT', ARGV[4])
local oldest = tonumber(ARGV[2])
for i = 1, #entries do
  local fields = entries[i][2]
  if tonumber(fields[4]) < oldest then return {0} end
  if fields[6] == ARGV[1] then return {1, fields[8]} end
end
if #entries < tonumber(ARGV[4]) then return {0} end
return {2, entries[#entries][1]}
`

/**
 * APPEND_MANY's command. Its key count comes first, as a number: ioredis's
 * auto-pipelining on a Cluster takes the first argument for the key, so the
 * Cluster must not auto-pipeline it (see createRedisConnections).
 */
export const APPEND_MANY_COMMAND = 'gwHistoryAppendMany'

/** Users per APPEND_MANY call: bounds each call's time in Redis (about 10 us per user). */
const APPEND_BATCH = 100

/** Entries a FIND call looks at: bounds each call's time in Redis. */
const FIND_BATCH = 256

type AppendReply = [Buffer, number, number, number]
/** READ_STEP's answer, as ioredis gives it for a Buffer command. */
export type ReadReply = [Buffer, number, ...Buffer[]]

/** A stream as READ_STEP read it. */
export function parseRead (reply: ReadReply): StreamRead {
  const entries: HistoryEntry[] = []
  for (let i = 2; i < reply.length; i += 2) {
    // Entry ids are `<seq>-0`.
    entries.push({ seq: parseInt((reply[i] as Buffer).toString('latin1'), 10), frame: reply[i + 1] as Buffer })
  }
  return { epoch: reply[0].toString('latin1'), top: reply[1], entries }
}

interface HistoryCommands {
  gwHistoryAppendBuffer: (stream: string, meta: string, held: string, ...args: Array<string | number | Buffer>) => Promise<AppendReply>
  gwHistoryAppendManyBuffer: (keyCount: number, ...args: Array<string | number | Buffer>) => Promise<Array<Buffer | number>>
  gwHistoryReadBuffer: (stream: string, meta: string, ...args: Array<string | number>) => Promise<ReadReply>
  gwHistoryFind: (stream: string, id: string, oldest: number, before: string, count: number) => Promise<[0] | [1 | 2, string]>
}

export interface RedisHistoryStoreOptions {
  redis: Redis
  prefix: string
  limits: HistoryLimits
  /** The channel a topic is published on. */
  channelOf: (topic: string) => string
  /** Prepended to every message: an origin no instance skips. */
  origin: Buffer
  topicOf: (owner: StreamOwner) => string
  /** SPUBLISH on a Redis Cluster. */
  publishCommand?: 'PUBLISH' | 'SPUBLISH'
  /** Where the user's connections per instance are counted (see RedisClaimStore). */
  held?: { keyOf: (userId: string) => string, instanceId: string }
}

/**
 * History in Redis Streams: `<prefix>hist:{<userId>}` per user and
 * `<prefix>all-hist:{all}` for broadcasts, each next to its meta hash in the
 * same hash slot (ready for Redis Cluster). Trimmed to the newest entries by
 * count at every append, expired with the retention when a stream goes
 * quiet, and filtered by age when read. The epoch and top live in the meta
 * hash for a month after the last alert.
 */
export class RedisHistoryStore implements HistoryStore {
  readonly #redis: Redis & HistoryCommands
  readonly #limits: HistoryLimits
  readonly #userStream: (id: string) => string
  readonly #userMeta: (id: string) => string
  readonly #allStream: string
  readonly #allMeta: string
  readonly #channelOf: (topic: string) => string
  readonly #topicOf: (owner: StreamOwner) => string
  readonly #prefixHead: Buffer
  readonly #publishCommand: string
  readonly #held: RedisHistoryStoreOptions['held']

  constructor (opts: RedisHistoryStoreOptions) {
    const redis = opts.redis as Redis & Partial<HistoryCommands>
    if (redis.gwHistoryAppendBuffer === undefined) {
      redis.defineCommand('gwHistoryAppend', { numberOfKeys: 3, lua: APPEND })
      // Keys given with each call: as many as the users of the batch.
      redis.defineCommand(APPEND_MANY_COMMAND, { lua: APPEND_MANY })
      redis.defineCommand('gwHistoryRead', { numberOfKeys: 2, lua: READ })
      redis.defineCommand('gwHistoryFind', { numberOfKeys: 1, lua: FIND })
    }
    this.#redis = redis as Redis & HistoryCommands
    this.#limits = opts.limits
    this.#userStream = taggedKey(opts.prefix, 'hist')
    this.#userMeta = taggedKey(opts.prefix, 'hmeta')
    this.#allStream = `${opts.prefix}all-hist:{all}`
    this.#allMeta = `${opts.prefix}all-hmeta:{all}`
    this.#channelOf = opts.channelOf
    this.#topicOf = opts.topicOf
    this.#prefixHead = Buffer.concat([opts.origin, Buffer.from('H')])
    this.#publishCommand = opts.publishCommand ?? 'PUBLISH'
    this.#held = opts.held
  }

  async append (owner: StreamOwner, head: string, tail: string, record?: AppendRecord): Promise<AppendResult> {
    const [stream, meta] = this.#keys(owner)
    const held = owner === null ? undefined : this.#held
    const [epoch, seq, receivers, others] = await this.#redis.gwHistoryAppendBuffer(
      stream, meta, held?.keyOf(owner as string) ?? stream, newEpoch(), this.#limits.maxEntries, this.#limits.retentionMs, STREAM_META_TTL_MS,
      Date.now(), this.#channelOf(this.#topicOf(owner)), this.#prefixHead, head, tail, this.#publishCommand,
      record?.value ?? '', record?.id ?? '', held?.instanceId ?? ''
    )
    return { epoch: epoch.toString('latin1'), seq, receivers, others: held === undefined ? undefined : others }
  }

  async appendMany (userIds: string[], head: string, tail: string): Promise<AppendResult[]> {
    const results: AppendResult[] = new Array(userIds.length)
    await Promise.all(this.#batches(userIds).map(async (batch) => {
      const keys: string[] = []
      const channels: string[] = []
      for (const i of batch) {
        const userId = userIds[i]
        keys.push(this.#userStream(userId), this.#userMeta(userId), this.#held?.keyOf(userId) ?? this.#userStream(userId))
        channels.push(this.#channelOf(this.#topicOf(userId)))
      }
      const reply = await this.#redis.gwHistoryAppendManyBuffer(
        keys.length, ...keys, newEpoch(), this.#limits.maxEntries, this.#limits.retentionMs, STREAM_META_TTL_MS,
        Date.now(), '', this.#prefixHead, head, tail, this.#publishCommand, '', '', this.#held?.instanceId ?? '', ...channels
      )
      for (const [k, i] of batch.entries()) {
        results[i] = {
          epoch: (reply[4 * k] as Buffer).toString('latin1'),
          seq: reply[4 * k + 1] as number,
          receivers: reply[4 * k + 2] as number,
          others: this.#held === undefined ? undefined : reply[4 * k + 3] as number
        }
      }
    }))
    return results
  }

  /**
   * Indexes of `userIds` in batches of one script each: at most
   * APPEND_BATCH users (Redis runs a script alone), and on a Cluster the
   * users of one slot only.
   */
  #batches (userIds: string[]): number[][] {
    const batches: number[][] = []
    if (this.#publishCommand !== 'SPUBLISH') {
      for (let i = 0; i < userIds.length; i += APPEND_BATCH) {
        batches.push(Array.from({ length: Math.min(APPEND_BATCH, userIds.length - i) }, (_, k) => i + k))
      }
      return batches
    }
    const bySlot = new Map<number, number[]>()
    for (const [i, userId] of userIds.entries()) {
      const slot = calculateSlot(this.#userStream(userId))
      const batch = bySlot.get(slot)
      if (batch === undefined || batch.length >= APPEND_BATCH) {
        const fresh = [i]
        bySlot.set(slot, fresh)
        batches.push(fresh)
      } else {
        batch.push(i)
      }
    }
    return batches
  }

  /**
   * The idempotency answer stored with an entry appended at `sinceMs` or
   * later (by the appending instance's clock) under `id`, if any.
   */
  async findRecord (owner: StreamOwner, id: string, sinceMs: number): Promise<string | undefined> {
    const [stream] = this.#keys(owner)
    let before = '+'
    for (;;) {
      const [state, value] = await this.#redis.gwHistoryFind(stream, id, sinceMs, before, FIND_BATCH)
      if (state === 0) return undefined
      if (state === 1) return value
      before = `(${value}`
    }
  }

  async read (owner: StreamOwner, from: Position | null): Promise<StreamRead> {
    const [stream, meta, ...args] = this.readStep(owner, from)
    return parseRead(await this.#redis.gwHistoryReadBuffer(stream, meta, ...args))
  }

  /** READ_STEP's keys and arguments for a read of the stream from `from` (null: its head). */
  readStep (owner: StreamOwner, from: Position | null): [string, string, string, string, number, number, number, number] {
    const [stream, meta] = this.#keys(owner)
    return [
      stream, meta, newEpoch(), from === null ? '' : from.epoch, from === null ? 0 : from.seq,
      this.#limits.maxEntries, Date.now() - this.#limits.retentionMs, STREAM_META_TTL_MS
    ]
  }

  #keys (owner: StreamOwner): [string, string] {
    return owner === null ? [this.#allStream, this.#allMeta] : [this.#userStream(owner), this.#userMeta(owner)]
  }
}
