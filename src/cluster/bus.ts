/** An event for one user's sessions, wherever they are connected. */
export type UserEvent =
  | { type: 'alert', frame: Buffer }
  /** A session of generation `generation` was accepted: close older ones. */
  | { type: 'claim', generation: number }
  /** The user logged out at `before` (epoch seconds): close every session. */
  | { type: 'logout', before: number }

export interface BusHandlers {
  /** A broadcast alert published by another instance, already encoded. */
  onBroadcast: (frame: Buffer) => void
  /** An event published by another instance for a user watched here. */
  onUserEvent: (userId: string, event: UserEvent) => void
  /** Connectivity changed (Redis bus only; the memory bus is always up). */
  onConnectedChange?: (connected: boolean) => void
}

/**
 * What the gateway needs from the cluster. The caller always applies an event
 * to its own sessions directly; the bus carries it to the *other* instances
 * only, so a local client never sees an event twice. Two implementations:
 * `memory` (one instance, nothing to carry) and `redis` (many instances).
 */
export interface Bus {
  readonly kind: 'memory' | 'redis'
  /** Whether events can reach other instances right now. */
  readonly connected: boolean
  /** Whether the bus answers right now (a round trip for Redis). */
  ping (): Promise<boolean>
  setHandlers (handlers: BusHandlers): void
  publishBroadcast (frame: Buffer): Promise<void>
  publishUser (userId: string, event: UserEvent): Promise<void>
  /** Start receiving the user's events here (reference counted). */
  watchUser (userId: string): Promise<void>
  unwatchUser (userId: string): void
  /** A cluster-wide, strictly increasing connection generation for the user. */
  nextGeneration (userId: string): Promise<number>
  /**
   * Records that the user's tokens issued at or before `before` (epoch s) are
   * revoked, and tells the other instances to close the user's sessions.
   */
  revoke (userId: string, before: number, ttlSec: number): Promise<void>
  /** The revocation second for the user, or null. */
  revokedBefore (userId: string): Promise<number | null>
  close (): Promise<void>
}
