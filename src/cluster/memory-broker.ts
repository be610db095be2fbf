import type { Broker, BrokerHandlers } from './broker.js'

/** The broker of a single instance: there is no other instance to reach. */
export class MemoryBroker implements Broker {
  readonly connected = true

  async ping (): Promise<boolean> {
    return true
  }

  setHandlers (_handlers: BrokerHandlers): void {}

  async publish (_topic: string, _message: Buffer): Promise<void> {}

  async subscribe (_topic: string): Promise<void> {}

  unsubscribe (_topic: string): void {}

  async close (): Promise<void> {}
}
