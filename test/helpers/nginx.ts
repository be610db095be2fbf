import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { makeCerts, type TestCerts as Certs } from './certs.js'
import { freePort } from './free-port.js'
import { RedisServer } from './redis-server.js'

const TEMPLATE = fileURLToPath(new URL('../../deploy/nginx.conf.template', import.meta.url))

interface Teardown {
  teardown: (fn: () => unknown) => void
}

export const nginxAvailable = spawnSync('nginx', ['-v']).error === undefined

/** Renders deploy/nginx.conf.template as envsubst would, for `vars` only. */
export function renderTemplate (vars: Record<string, string>): string {
  return readFileSync(TEMPLATE, 'utf8').replace(/\$\{([A-Z_]+)\}/g, (match, name: string) => vars[name] ?? match)
}

async function waitForPort (port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1')
      socket.once('connect', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after ${timeoutMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/**
 * Runs Debian's nginx in the foreground with the project's deploy template,
 * everything (pid, logs, temp files) inside `dir`.
 */
export async function startNginx (t: Teardown, dir: string, vars: Record<string, string> & { LISTEN: string }): Promise<ChildProcess> {
  for (const sub of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, sub), { recursive: true })
  writeFileSync(join(dir, 'site.conf'), renderTemplate(vars))
  writeFileSync(join(dir, 'nginx.conf'), [
    'worker_processes 1;',
    'daemon off;',
    `error_log ${join(dir, 'error.log')} warn;`,
    `pid ${join(dir, 'nginx.pid')};`,
    'events { worker_connections 1024; }',
    'http {',
    '  access_log off;',
    ...['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((s) => `  ${s === 'body' ? 'client_body' : s}_temp_path ${join(dir, s)};`),
    `  include ${join(dir, 'site.conf')};`,
    '}',
    ''
  ].join('\n'))
  const child = spawn('nginx', ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] })
  const reap = (): void => { child.kill('SIGKILL') }
  process.once('exit', reap)
  child.once('exit', () => process.removeListener('exit', reap))
  let stderr = ''
  child.stderr?.on('data', (c: Buffer) => { stderr += c.toString() })
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      await exited
    }
  })
  await Promise.race([
    waitForPort(Number(vars.LISTEN), 10000),
    once(child, 'exit').then(() => { throw new Error(`nginx exited: ${stderr}`) })
  ])
  return child
}

/**
 * The pieces of two production gateways behind nginx with TLS: a throwaway
 * CA and certificate, a private Redis, free ports for both instances and
 * the proxy, the production settings they share, and `proxy()` to start
 * nginx in front of them once they run. Returns the proxy's https base URL.
 */
export async function tlsFront (t: Teardown & { testdir: () => string }): Promise<{
  certs: Certs
  ports: { a: number, b: number, listen: number }
  env: Record<string, string>
  proxy: () => Promise<string>
}> {
  const dir = t.testdir()
  const certs = makeCerts(dir)
  const redis = await RedisServer.start(t)
  const [a, b, listen] = await Promise.all([freePort(), freePort(), freePort()])
  return {
    certs,
    ports: { a, b, listen },
    env: { NODE_ENV: 'production', REDIS_URL: redis.url, TRUST_PROXY: '127.0.0.1' },
    async proxy () {
      await startNginx(t, dir, { LISTEN: String(listen), GATEWAY_A: `127.0.0.1:${a}`, GATEWAY_B: `127.0.0.1:${b}`, TLS_CERT: certs.certFile, TLS_KEY: certs.keyFile })
      return `https://127.0.0.1:${listen}`
    }
  }
}
