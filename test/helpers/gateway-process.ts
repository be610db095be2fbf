import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { EnvSchema } from '../../config/index.js'
import { TEST_SECRET } from './tokens.js'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

const SERVER = fileURLToPath(new URL('../../src/server.ts', import.meta.url))

export interface GatewayProcess {
  child: ChildProcess
  port: number
  url: string
  wsUrl: string
  /** Everything written to stdout and stderr so far. */
  output: () => string
  /** Resolves with the exit code (or signal) when the process exits. */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

/**
 * Runs src/server.ts in a child process, with tap's TypeScript loader (and
 * coverage) inherited through execArgv. Use it where process behaviour is
 * under test: signals, exit codes, start-up configuration errors.
 */
export function spawnGateway (env: Record<string, string>, opts: { cwd?: string } = {}): { child: ChildProcess, output: () => string, exited: GatewayProcess['exited'] } {
  let output = ''
  // Keep tap's variables (transpile-only TypeScript, coverage), drop any
  // gateway setting of the parent environment.
  const inherited: NodeJS.ProcessEnv = { ...process.env }
  for (const name of Object.keys(EnvSchema.properties)) delete inherited[name]
  const child = spawn(process.execPath, [...process.execArgv, SERVER], {
    cwd: opts.cwd,
    env: { ...inherited, NODE_ENV: 'test', HOST: '127.0.0.1', PORT: '0', JWT_SECRET: TEST_SECRET, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const reap = (): void => { child.kill('SIGKILL') }
  process.once('exit', reap)
  child.once('exit', () => process.removeListener('exit', reap))
  child.stdout?.on('data', (c: Buffer) => { output += c.toString() })
  child.stderr?.on('data', (c: Buffer) => { output += c.toString() })
  const exited = once(child, 'exit').then(([code, signal]) => ({ code, signal })) as GatewayProcess['exited']
  return { child, output: () => output, exited }
}

/** Starts a gateway process and waits until it listens. */
export async function startGateway (t: Teardown, env: Record<string, string> = {}, opts: { cwd?: string } = {}): Promise<GatewayProcess> {
  const started = spawnGateway(env, opts)
  t.teardown(async () => {
    if (started.child.exitCode === null && started.child.signalCode === null) {
      started.child.kill('SIGKILL')
      await started.exited
    }
  })
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not start: ${started.output()}`)), 60000)
    const check = (): void => {
      const match = /Server listening at https?:\/\/127\.0\.0\.1:(\d+)/.exec(started.output())
      if (match !== null) {
        clearTimeout(timer)
        resolve(Number(match[1]))
      }
    }
    started.child.stdout?.on('data', check)
    started.child.stderr?.on('data', check)
    started.exited.then(() => {
      clearTimeout(timer)
      reject(new Error(`gateway exited: ${started.output()}`))
    }, reject)
  })
  const scheme = env.TLS_CERT_FILE !== undefined ? 'https' : 'http'
  return {
    ...started,
    port,
    url: `${scheme}://127.0.0.1:${port}`,
    wsUrl: `${scheme === 'https' ? 'wss' : 'ws'}://127.0.0.1:${port}/ws`
  }
}
