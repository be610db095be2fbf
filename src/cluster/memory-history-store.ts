import { formatPosition, type Position } from '../../protocol/position.js'
import { ALL_TOPIC, userTopic } from './broker.js'
import {
  STREAM_META_TTL_MS, historyMessage, newEpoch,
  type AppendResult, type HistoryLimits, type HistoryStore, type StreamOwner, type StreamRead
} from './history-store.js'

interface Stream {
  /** The epoch its positions count in. */
  epoch: string
  top: number
  lastAt: number
  /** Oldest first; `ts` is when it was appended. */
  entries: Array<{ seq: number, frame: Buffer, ts: number }>
}

/** How often the streams untouched for STREAM_META_TTL_MS are dropped. */
const SWEEP_EVERY_MS = 60_000

/**
 * History of a single instance: a ring per stream, in process. One epoch for
 * the life of the process: a restart loses the history, and changes it. A
 * stream swept away after a month without alerts starts again in an epoch of
 * its own, so positions given out before are never given again.
 * Appending hands the message to `deliver` synchronously, so positions and
 * delivery order agree trivially.
 */
export class MemoryHistoryStore implements HistoryStore {
  readonly #streams = new Map<string, Stream>()
  readonly #limits: HistoryLimits
  readonly #deliver: (topic: string, message: Buffer) => void
  /** The epoch of streams created from now on: a new one after every sweep that dropped one. */
  #epoch = newEpoch()
  #sweptAt = Date.now()

  constructor (limits: HistoryLimits, deliver: (topic: string, message: Buffer) => void) {
    this.#limits = limits
    this.#deliver = deliver
  }

  async append (owner: StreamOwner, head: string, tail: string): Promise<AppendResult> {
    const now = Date.now()
    this.#sweep(now)
    const stream = this.#stream(owner, now)
    const seq = ++stream.top
    stream.lastAt = now
    const pos = formatPosition(stream.epoch, seq)
    const frame = Buffer.from(head + pos + tail)
    stream.entries.push({ seq, frame, ts: now })
    this.#trim(stream, now)
    this.#deliver(owner === null ? ALL_TOPIC : userTopic(owner), historyMessage(pos, frame))
    return { epoch: stream.epoch, seq, receivers: 0 }
  }

  async appendMany (userIds: string[], head: string, tail: string): Promise<AppendResult[]> {
    return await Promise.all(userIds.map((userId) => this.append(userId, head, tail)))
  }

  async read (owner: StreamOwner, from: Position | null): Promise<StreamRead> {
    const now = Date.now()
    const stream = this.#stream(owner, now)
    this.#trim(stream, now)
    const read: StreamRead = { epoch: stream.epoch, top: stream.top, entries: [] }
    if (from === null) return read
    const after = from.epoch === stream.epoch ? from.seq : 0
    const { entries } = stream
    // Newest maxEntries after `after` (the ring holds at most that many).
    for (let i = 0; i < entries.length; i++) {
      if (entries[i].seq > after) read.entries.push({ seq: entries[i].seq, frame: entries[i].frame })
    }
    return read
  }

  #stream (owner: StreamOwner, now: number): Stream {
    const key = owner === null ? '' : `u${owner}`
    let stream = this.#streams.get(key)
    if (stream === undefined) {
      stream = { epoch: this.#epoch, top: 0, lastAt: now, entries: [] }
      this.#streams.set(key, stream)
    }
    return stream
  }

  #trim (stream: Stream, now: number): void {
    const { entries } = stream
    const oldest = now - this.#limits.retentionMs
    let drop = Math.max(0, entries.length - this.#limits.maxEntries)
    while (drop < entries.length && entries[drop].ts < oldest) drop++
    if (drop > 0) entries.splice(0, drop)
  }

  /** Forgets streams quiet for longer than an epoch is kept, so the map stays bounded. */
  #sweep (now: number): void {
    if (now - this.#sweptAt < SWEEP_EVERY_MS) return
    this.#sweptAt = now
    let dropped = false
    for (const [key, stream] of this.#streams) {
      if (now - stream.lastAt > STREAM_META_TTL_MS) {
        this.#streams.delete(key)
        dropped = true
      }
    }
    if (dropped) this.#epoch = newEpoch()
  }
}
