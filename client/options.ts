import { DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js'
import { defaultStorage, type PositionStorage } from './position-storage.js'
import type { Alert } from './protocol.js'
import type { ClientError, GapNotice, Listener, ResumeResult, StateChange } from './typed-events.js'

/**
 * What the client needs of a WebSocket: the browser's, Node 22's global one,
 * or the `ws` package's class. Event parameters are loose so each of those
 * fits without a cast.
 */
export interface WebSocketLike {
  readonly readyState: number
  send (data: string): void
  close (code?: number, reason?: string): void
  /** `ws` only: drops the connection without a close handshake. */
  terminate?: () => void
  onmessage: ((event: any) => void) | null
  onclose: ((event: any) => void) | null
  onerror: ((event: any) => void) | null
}

export type WebSocketConstructor = new (url: string) => WebSocketLike

export interface ConnectOptions {
  /** The gateway's /ws endpoint: ws(s)://host/ws (http(s) is turned into ws(s)). */
  url: string | URL
  /** Called before every connect and on every re-auth request; resolves to a fresh JWT. */
  getToken: () => string | Promise<string>
  onAlert?: Listener<Alert>
  onState?: Listener<StateChange>
  onError?: Listener<ClientError>
  onResumed?: Listener<ResumeResult>
  onGap?: Listener<GapNotice>
  /**
   * Where the stream positions are kept between page loads (a reload
   * resumes where the page stood). Default `sessionStorage` (per tab) where
   * there is one, else memory. Pass `localStorage` to share them between
   * tabs, or any `{ getItem, setItem }`, sync or async.
   */
  storage?: PositionStorage
  /** Prefix of the storage key; the user id (the token's `sub`) follows. Default `alert-gateway:positions:`. */
  storageKeyPrefix?: string
  /** A WebSocket class; default `globalThis.WebSocket` (pass `ws` on Node 20). */
  WebSocket?: WebSocketConstructor
  /** Reconnect delays: full jitter between 0 and min(capMs, baseMs * 2^attempt). Default 500 ms -> 30 s. */
  backoff?: Partial<BackoffOptions>
  /** Connect attempts allowed in any rolling minute (a whole number); default 5, the gateway's limit. */
  maxAttemptsPerMinute?: number
  /** Reconnect after 4409 (replaced by a newer connection of the same user). Default false. */
  reconnectOnReplaced?: boolean
  /** Application ping this long after the welcome or the last pong; default 25000 ms. */
  pingIntervalMs?: number
  /** No pong within this time: the link is dead, reconnect. Default 10000 ms. */
  pongTimeoutMs?: number
  /**
   * Bounds each step of a connect attempt: getToken() and reading the
   * positions, then the welcome after dialling. Past it the attempt is given
   * up, reported (error `timeout`) and retried. Default 10000 ms.
   */
  connectTimeoutMs?: number
  /** How many recent alert ids are remembered to drop duplicates (a whole number); default 1000. */
  dedupeCapacity?: number
  /** Send `ack` as soon as the alert listeners have run. Default false: call ack() once shown. */
  autoAck?: boolean
  /** Source of randomness for the jitter (tests); default Math.random. */
  random?: () => number
  /** Clock for the attempt limit (tests); default Date.now. */
  now?: () => number
}

export interface ResolvedOptions {
  url: string
  getToken: () => string | Promise<string>
  WebSocket: WebSocketConstructor
  storage: PositionStorage
  storageKeyPrefix: string
  backoff: BackoffOptions
  maxAttemptsPerMinute: number
  attemptWindowMs: number
  reconnectOnReplaced: boolean
  pingIntervalMs: number
  pongTimeoutMs: number
  connectTimeoutMs: number
  dedupeCapacity: number
  autoAck: boolean
  random: () => number
  now: () => number
}

/** The server counts attempts per minute; a second more absorbs clock and network skew. */
const ATTEMPT_WINDOW_MS = 61_000

function positive (name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback
  if (!Number.isFinite(value) || value <= 0) throw new TypeError(`connect: option ${name} must be a positive number`)
  return value
}

/** A count: a fraction would be rounded down to 0, no attempt limit or no dedupe memory at all. */
function positiveInteger (name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback
  if (!Number.isSafeInteger(value) || value < 1) throw new TypeError(`connect: option ${name} must be a whole number of at least 1`)
  return value
}

function wsUrl (value: string | URL): string {
  const url = new URL(value)
  if (url.protocol === 'http:' || url.protocol === 'https:') url.protocol = url.protocol === 'http:' ? 'ws:' : 'wss:'
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') throw new TypeError(`connect: option url must be a ws(s) or http(s) URL, not ${url.protocol}`)
  return url.toString()
}

/** Checks the options and fills in the defaults; throws a TypeError naming a bad option. */
export function resolveOptions (options: ConnectOptions): ResolvedOptions {
  if (typeof options.getToken !== 'function') throw new TypeError('connect: option getToken must be a function')
  const WebSocket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
  if (WebSocket === undefined) throw new TypeError('connect: no global WebSocket here (Node 20): pass option WebSocket, e.g. the ws package')
  if (options.storage !== undefined && (typeof options.storage?.getItem !== 'function' || typeof options.storage.setItem !== 'function')) {
    throw new TypeError('connect: option storage must have getItem and setItem methods')
  }
  return {
    url: wsUrl(options.url),
    getToken: options.getToken,
    WebSocket,
    storage: options.storage ?? defaultStorage(),
    storageKeyPrefix: options.storageKeyPrefix ?? 'alert-gateway:positions:',
    backoff: {
      baseMs: positive('backoff.baseMs', options.backoff?.baseMs, DEFAULT_BACKOFF.baseMs),
      capMs: positive('backoff.capMs', options.backoff?.capMs, DEFAULT_BACKOFF.capMs)
    },
    maxAttemptsPerMinute: positiveInteger('maxAttemptsPerMinute', options.maxAttemptsPerMinute, 5),
    attemptWindowMs: ATTEMPT_WINDOW_MS,
    reconnectOnReplaced: options.reconnectOnReplaced === true,
    pingIntervalMs: positive('pingIntervalMs', options.pingIntervalMs, 25_000),
    pongTimeoutMs: positive('pongTimeoutMs', options.pongTimeoutMs, 10_000),
    connectTimeoutMs: positive('connectTimeoutMs', options.connectTimeoutMs, 10_000),
    dedupeCapacity: positiveInteger('dedupeCapacity', options.dedupeCapacity, 1000),
    autoAck: options.autoAck === true,
    random: options.random ?? Math.random,
    now: options.now ?? Date.now
  }
}
