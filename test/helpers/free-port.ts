import { createServer } from 'node:net'

/**
 * Ports handed out, below Linux's ephemeral range (32768-60999): a port the
 * OS picks for `listen(0)` comes from that range, where the suite's many
 * outgoing connections also take their source ports, so a server started
 * on it a moment later could find it taken ("Address already in use").
 */
const FIRST = 20_000
const LAST = 32_767
const TRIES = 50

/** Whether a listener can bind `port` on 127.0.0.1 right now. */
function bindable (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/** A TCP port that was free a moment ago on 127.0.0.1, outside the ephemeral range. */
export async function freePort (): Promise<number> {
  for (let i = 0; i < TRIES; i++) {
    // Random, so that the suite's parallel files rarely pick the same one.
    const port = FIRST + Math.floor(Math.random() * (LAST - FIRST + 1))
    if (await bindable(port)) return port
  }
  throw new Error(`no free port in ${FIRST}-${LAST} after ${TRIES} tries`)
}
