/**
 * Stream positions (`pos`). Opaque to clients: at most 64 characters of
 * `A-Z a-z 0-9 . _ : -`. The server writes `<epoch>:<seq>`: `epoch` names one
 * life of the stream's history (it changes whenever that history may have
 * been lost), `seq` counts the stream's alerts within it, from 1.
 */

/** What a client may send back as a position; anything else is malformed. */
export const POSITION_PATTERN = '^[A-Za-z0-9._:-]{1,64}$'
const WELL_FORMED = new RegExp(POSITION_PATTERN)
const SERVER_FORM = /^([A-Za-z0-9_-]{1,40}):(0|[1-9]\d{0,14})$/

/** The two streams a session follows: broadcasts, and the user's own. */
export type StreamName = 'all' | 'user'

export interface Position {
  epoch: string
  seq: number
}

export function isWellFormedPosition (value: string): boolean {
  return WELL_FORMED.test(value)
}

export function formatPosition (epoch: string, seq: number): string {
  return `${epoch}:${seq}`
}

/**
 * The epoch and sequence of a position this server wrote, or null for a
 * well-formed string it never writes (treated as an unknown position).
 */
export function parsePosition (value: string): Position | null {
  const match = SERVER_FORM.exec(value)
  return match === null ? null : { epoch: match[1], seq: Number(match[2]) }
}
