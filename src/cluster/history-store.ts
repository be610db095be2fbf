import { randomBytes } from 'node:crypto'
import type { Position } from '../../protocol/position.js'

/**
 * Per-stream history: the `all` stream (broadcasts) and one stream per user.
 * An alert is appended and handed to the instances following its stream in
 * one step, so the order of positions is the order of delivery everywhere.
 *
 * What is handed over is a history message on the stream's topic: one type
 * byte `H`, the position, a space, then the alert frame (which carries the
 * same position). See `historyMessage` and `readHistoryMessage`.
 */

/** One alert of a stream: its sequence number and its encoded frame. */
export interface HistoryEntry {
  seq: number
  frame: Buffer
}

/** A stream as read: its epoch, newest sequence number, and the entries asked for. */
export interface StreamRead {
  epoch: string
  /** Sequence number of the newest alert ever appended in this epoch (0: none). */
  top: number
  /** Entries after the asked position, oldest first (see HistoryStore.read). */
  entries: HistoryEntry[]
}

export interface AppendResult {
  epoch: string
  seq: number
  /** Instances the alert was handed to (Redis: PUBLISH's count; memory: 0). */
  receivers: number
  /** For a user's stream: the user's connections held by the other instances, when known. */
  others?: number
}

/** The stream of broadcasts is named by null, a user's stream by the user id. */
export type StreamOwner = string | null

/**
 * An idempotency answer to store in the same step as the append, so that a
 * retry after a publish whose reply was lost (Redis died after running it)
 * finds the answer instead of publishing again: `value + pos + '"}'` is
 * stored with the entry under `id`. It lives as long as the entry; being
 * part of the entry, it needs no key of its own (on a Cluster a new key
 * would stall the script while the stream's slot migrates).
 */
export interface AppendRecord {
  id: string
  value: string
}

export interface HistoryStore {
  /**
   * Appends the alert whose frame is `head + position + tail` to the stream,
   * then hands it to the instances following the stream, in one step.
   * `record` is stored in that step where the store can (see AppendRecord).
   */
  append (owner: StreamOwner, head: string, tail: string, record?: AppendRecord): Promise<AppendResult>
  /**
   * The same alert appended to each user's stream (as append() does, in as
   * few steps as the store can); the results in the order of `userIds`.
   */
  appendMany (userIds: string[], head: string, tail: string): Promise<AppendResult[]>
  /**
   * The stream's epoch and top, and with `from`: the newest entries (at most
   * the configured maximum, none older than the retention) after `from` when
   * `from` is of the current epoch, or after the start of the epoch when not.
   * A stream that has none is given an epoch here, so every position handed
   * out names one.
   */
  read (owner: StreamOwner, from: Position | null): Promise<StreamRead>
}

export interface HistoryLimits {
  /** Newest alerts kept per stream (at least 1: history off has no store). */
  maxEntries: number
  retentionMs: number
}

/** An epoch and top outlive the entries: a quiet stream is not a gap. */
export const STREAM_META_TTL_MS = 30 * 24 * 3600 * 1000

/** Type byte of a history message. */
export const HISTORY_MESSAGE = 0x48 // 'H'
const SPACE = 0x20

/** The message handed to the instances for an alert at `pos`. */
export function historyMessage (pos: string, frame: Buffer): Buffer {
  const head = Buffer.from(`H${pos} `, 'latin1')
  return Buffer.concat([head, frame], head.length + frame.length)
}

/** The position and frame of a history message, or null when it is not one. */
export function readHistoryMessage (message: Buffer): { pos: string, frame: Buffer } | null {
  if (message[0] !== HISTORY_MESSAGE) return null
  const space = message.indexOf(SPACE, 1)
  if (space === -1) return null
  return { pos: message.toString('latin1', 1, space), frame: message.subarray(space + 1) }
}

/**
 * Epochs: unique per creation, so a stream recreated by the same instance
 * (Redis restarted twice without persistence) never reuses one. Base 36 time
 * plus this process's random tag and a counter.
 */
const PROCESS_TAG = randomBytes(4).toString('hex')
let epochCounter = 0

/** Length of the creation-time prefix of an epoch (base 36 ms: 8 digits until 2059). */
const EPOCH_TIME_LENGTH = 8

/** Whether epoch `a` was created after epoch `b` (by their time prefixes). */
export function isNewerEpoch (a: string, b: string): boolean {
  return a.slice(0, EPOCH_TIME_LENGTH) > b.slice(0, EPOCH_TIME_LENGTH)
}

export function newEpoch (): string {
  epochCounter = (epochCounter + 1) % 1296
  return `${Date.now().toString(36)}${PROCESS_TAG}${epochCounter.toString(36)}`
}
