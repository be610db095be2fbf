import { formatPosition, type Position } from '../../protocol/position.js'
import { isNewerEpoch, type HistoryEntry, type StreamOwner, type StreamRead } from '../cluster/history-store.js'
import type { Log } from '../lib/log.js'

/** Live messages held while a catch-up reads; past this, history has them anyway. */
const QUEUE_MAX = 10_000

/**
 * What a follow asks of its owner; one object for every follow of an
 * instance (each call names the stream), so a followed user costs no
 * closures.
 */
export interface FollowHooks {
  /** History of `owner`'s stream after `from` (see HistoryStore.read). */
  read: (owner: StreamOwner, from: Position) => Promise<StreamRead>
  /** Writes an alert of the stream to the local sessions following it. */
  deliver: (owner: StreamOwner, seq: number, frame: Buffer) => void
  /**
   * Alerts may be missing up to `pos`: tell the sessions following the
   * stream. With `newEpoch` the stream's epoch changed (its history was
   * lost): positions of the old one mean nothing here any more. With
   * `rewoundTo` the stream's positions after it were given again to other
   * alerts (see StreamFollow): floors above it no longer hold.
   */
  gap: (owner: StreamOwner, pos: string, newEpoch: string | null, rewoundTo?: number) => void
  caughtUp: (result: 'caught_up' | 'gap') => void
  log: Log
}

interface Queued {
  epoch: string
  seq: number
  frame: Buffer
}

/**
 * One stream as this instance follows it: the position of the last alert
 * delivered here, and the newest frames (for a session that registers just
 * after they went by). Live alerts arrive in position order; one that does
 * not follow the last (the subscription was interrupted, the epoch changed)
 * starts a catch-up: live alerts wait in a queue while the missed ones are
 * read from history and delivered, then flow again. What history cannot give
 * any more is announced as a gap, never skipped silently.
 */
export class StreamFollow {
  epoch: string | null = null
  seq = 0
  readonly #ring: HistoryEntry[] = []
  readonly #ringSize: number
  readonly #owner: StreamOwner
  readonly #hooks: FollowHooks
  readonly #queue: Queued[] = []
  #catching = false
  #again = false
  /** A catch-up was asked for before any position was known: run it once one is. */
  #owed = false
  #closed = false

  constructor (ringSize: number, owner: StreamOwner, hooks: FollowHooks) {
    this.#ringSize = ringSize
    this.#owner = owner
    this.#hooks = hooks
  }

  get position (): string {
    /* c8 ignore next -- read before any alert or history of the stream was seen */
    return formatPosition(this.epoch ?? 'none', this.seq)
  }

  /** A live alert at `epoch:seq`. */
  receive (epoch: string, seq: number, frame: Buffer): void {
    if (this.#catching) {
      // The running catch-up delivers it after the missed ones.
      this.#enqueue({ epoch, seq, frame })
      return
    }
    if (this.#queue.length > 0 || !this.#accept(epoch, seq, frame)) {
      this.#enqueue({ epoch, seq, frame })
      this.catchUp()
    }
  }

  /**
   * Frames delivered here after `seq` (epoch `epoch`), for a session that
   * read history up to `seq` and registers now; null when they are not all
   * at hand any more.
   */
  since (epoch: string, seq: number): HistoryEntry[] | null {
    if (this.epoch === null) {
      // Nothing went by yet: start from what the session read, and read on
      // from there if the bus was interrupted since that read.
      this.epoch = epoch
      this.seq = seq
      if (this.#owed) {
        this.#owed = false
        this.catchUp()
      }
      return []
    }
    if (epoch !== this.epoch || this.seq <= seq) return []
    const ring = this.#ring
    if (ring.length === 0 || ring[0].seq > seq + 1) return null
    const out: HistoryEntry[] = []
    for (let i = 0; i < ring.length; i++) if (ring[i].seq > seq) out.push(ring[i])
    return out
  }

  /** Reads what was missed since the last delivered alert; safe to call at any time. */
  catchUp (): void {
    if (this.#closed) return
    if (this.epoch === null) {
      // No position yet to read from: the first one given (since()) is read on from.
      this.#owed = true
      return
    }
    if (this.#catching) {
      this.#again = true
      return
    }
    this.#catching = true
    this.#run().catch((err: Error) => {
      // The bus is down again: the next reconnect catches up.
      this.#hooks.log.debug({ err: err.message }, 'catch-up interrupted')
    }).finally(() => {
      this.#catching = false
      // Asked for while this one was out (the bus came back meanwhile), and
      // this one failed: still owed.
      if (this.#again) this.catchUp()
    })
  }

  close (): void {
    this.#closed = true
    this.#queue.length = 0
  }

  async #run (): Promise<void> {
    do {
      this.#again = false
      await this.#readMissed()
      if (this.#closed) return
      while (this.#queue.length > 0) {
        const next = this.#queue[0]
        if (next.epoch !== this.epoch) {
          // Of an epoch the read did not return: an older one (history has
          // been lost since), or a newer one, which its next alert or
          // catch-up reads from history. Either way not deliverable here.
          this.#queue.shift()
          /* c8 ignore next -- history lost again while its read was out */
          if (this.#newerThanRead(next.epoch)) this.#again = true
          continue
        }
        if (!this.#accept(next.epoch, next.seq, next.frame)) {
          this.#again = true
          break
        }
        this.#queue.shift()
      }
    } while (this.#again && !this.#closed)
  }

  async #readMissed (): Promise<void> {
    const read = await this.#hooks.read(this.#owner, { epoch: this.epoch as string, seq: this.seq })
    if (this.#closed) return
    let gap = false
    let newEpoch: string | null = null
    if (read.epoch !== this.epoch) {
      // History was lost (or the stream started over): what the old epoch
      // had after our position cannot be known.
      gap = true
      newEpoch = read.epoch
      this.epoch = read.epoch
      this.seq = 0
      this.#ring.length = 0
    }
    if (!gap && read.top < this.seq) {
      // The store has fewer alerts than were delivered here: lost (see #reused).
      this.#rewind(read.top)
      this.#hooks.caughtUp('gap')
      return
    }
    const first = read.entries.length > 0 ? read.entries[0].seq : read.top + 1
    if (first > this.seq + 1) {
      // Trimmed or expired before we could read it.
      gap = true
      this.seq = first - 1
    }
    if (gap) this.#hooks.gap(this.#owner, this.position, newEpoch)
    for (const entry of read.entries) {
      if (entry.seq > this.seq) this.#deliver(entry.seq, entry.frame)
    }
    this.#hooks.caughtUp(gap ? 'gap' : 'caught_up')
  }

  /** Whether `epoch` started after the epoch last read (epochs begin with their creation time). */
  #newerThanRead (epoch: string): boolean {
    return isNewerEpoch(epoch, this.epoch as string)
  }

  /** Delivers the alert if it is the next one; false when it needs a catch-up first. */
  #accept (epoch: string, seq: number, frame: Buffer): boolean {
    if (this.epoch === null) {
      // First alert seen here: no session read before it, nothing was missed.
      this.epoch = epoch
      this.seq = seq - 1
      this.#owed = false
    }
    if (epoch !== this.epoch || seq > this.seq + 1) return false
    if (seq === this.seq + 1) {
      this.#deliver(seq, frame)
    } else if (this.#reused(seq, frame)) {
      this.#rewind(seq - 1)
      this.#deliver(seq, frame)
    }
    return true
  }

  /**
   * A position delivered here before now names another alert: the store
   * lost the alerts from there on (a failover to a replica that had not
   * received them) and gave their positions again. Only recent positions
   * can be compared; older reuse shows in a catch-up as a top below ours.
   */
  #reused (seq: number, frame: Buffer): boolean {
    const ring = this.#ring
    for (let i = ring.length - 1; i >= 0; i--) {
      if (ring[i].seq === seq) return !ring[i].frame.equals(frame)
    }
    return false
  }

  /** Back to `seq`: the alerts after it are lost; say so and let floors above it go. */
  #rewind (seq: number): void {
    this.seq = seq
    while (this.#ring.length > 0 && this.#ring[this.#ring.length - 1].seq > seq) this.#ring.pop()
    this.#hooks.log.warn({ pos: this.position }, 'stream positions given again: history lost alerts after this one')
    this.#hooks.gap(this.#owner, this.position, null, seq)
  }

  #deliver (seq: number, frame: Buffer): void {
    this.seq = seq
    this.#ring.push({ seq, frame })
    if (this.#ring.length > this.#ringSize) this.#ring.shift()
    this.#hooks.deliver(this.#owner, seq, frame)
  }

  #enqueue (message: Queued): void {
    if (this.#queue.length >= QUEUE_MAX) {
      // History holds them: drop the queue and read again.
      this.#queue.length = 0
      this.#again = true
    }
    this.#queue.push(message)
  }
}
