import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { freePort } from './free-port.js'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

/**
 * A private redis-server for one suite, on a free port, with nothing kept on
 * disk. Never the shared server on 6379.
 */
export class RedisServer {
  readonly port: number
  #child: ChildProcess | null = null

  private constructor (port: number) {
    this.port = port
  }

  get url (): string {
    return `redis://127.0.0.1:${this.port}`
  }

  static async start (t: Teardown): Promise<RedisServer> {
    const server = new RedisServer(await freePort())
    await server.start()
    t.teardown(() => server.stop())
    return server
  }

  /** (Re)starts the server on its port; resolves once it accepts connections. */
  async start (): Promise<void> {
    const child = spawn('redis-server', [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--protected-mode', 'no', '--loglevel', 'notice'
    ], { stdio: ['ignore', 'pipe', 'pipe'] })
    this.#child = child
    // Never outlive the test process, even when it ends without teardown
    // (a tap timeout): a leftover server would hold its port and memory.
    const reap = (): void => { child.kill('SIGKILL') }
    process.once('exit', reap)
    child.once('exit', () => process.removeListener('exit', reap))
    let output = ''
    await new Promise<void>((resolve, reject) => {
      const onData = (chunk: Buffer): void => {
        output += chunk.toString()
        if (output.includes('Ready to accept connections')) resolve()
      }
      child.stdout?.on('data', onData)
      child.stderr?.on('data', onData)
      child.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${output}`)))
      child.once('error', reject)
    })
    // Keep draining output so the pipe never fills.
    child.stdout?.resume()
    child.stderr?.resume()
  }

  /** Kills the server (SIGKILL: an outage, not a clean shutdown). */
  async stop (): Promise<void> {
    const child = this.#child
    this.#child = null
    if (child === null || child.exitCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
  }
}
