/**
 * What a broker delivers: a message published on another instance to a
 * topic subscribed here. Topics are `all` and one per user (`userTopic`).
 */
export interface BrokerHandlers {
  onMessage: (topic: string, message: Buffer) => void
  /** Connectivity changed (always up for the in-process broker). */
  onConnectedChange?: (connected: boolean) => void
  /** A probe did not come back through the subscription in time. */
  onProbeFailure?: () => void
}

/**
 * Publish/subscribe between instances (the shape of platformatic/mcp's
 * MessageBroker). A message reaches the *other* instances subscribed to its
 * topic, never the one that published it: that one applies its own events
 * directly. Two implementations side by side: memory (one instance, nothing
 * to carry) and Redis.
 */
export interface Broker {
  /** Whether messages reach the other instances right now. */
  readonly connected: boolean
  /** Whether the broker answers right now (a round trip for Redis). */
  ping (): Promise<boolean>
  setHandlers (handlers: BrokerHandlers): void
  /** Resolves to the number of instances subscribed to `topic` (0 for the in-process broker). */
  publish (topic: string, message: Buffer): Promise<number>
  /** Resolves once messages of `topic` are delivered here. */
  subscribe (topic: string): Promise<void>
  unsubscribe (topic: string): void
  close (): Promise<void>
}

/**
 * The topic of broadcasts. Its hash tag puts the channel in the slot of the
 * broadcast history's keys (`all-hist:{all}`), so on Redis Cluster the
 * script that appends a broadcast can also publish it.
 */
export const ALL_TOPIC = 'all:{all}'

/**
 * One user's topic. The hash tag keeps it in the slot of the user's keys
 * (`gen:{<userId>}`, `revoked:{<userId>}`), ready for Redis Cluster.
 */
export function userTopic (userId: string): string {
  return `user:{${userId}}`
}

/** The user of a user topic. */
export function userOfTopic (topic: string): string {
  return topic.slice(6, -1)
}
