import type { Broker, BrokerHandlers } from './broker.js'

/**
 * The broker of a single instance: there is no other instance to reach.
 * `loopback` hands a message to this instance's own handler (the in-process
 * history delivers through it, as Redis delivers to every subscriber).
 */
export class MemoryBroker implements Broker {
  readonly connected = true
  #handlers: BrokerHandlers = { onMessage: () => {} }

  async ping (): Promise<boolean> {
    return true
  }

  setHandlers (handlers: BrokerHandlers): void {
    this.#handlers = handlers
  }

  loopback (topic: string, message: Buffer): void {
    this.#handlers.onMessage(topic, message)
  }

  async publish (_topic: string, _message: Buffer): Promise<number> {
    return 0
  }

  async subscribe (_topic: string): Promise<void> {}

  unsubscribe (_topic: string): void {}

  async close (): Promise<void> {}
}
