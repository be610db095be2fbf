import { spawn, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { once } from 'node:events'
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { connect, createServer, type Socket } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { createVerifier } from 'fast-jwt'
import t from 'tap'
import { EnvSchema } from '../config/index.js'
import { build } from './helpers/build.js'
import { spawnGateway } from './helpers/gateway-process.js'
import { TEST_SECRET, userToken } from './helpers/tokens.js'
import { TestClient } from './helpers/ws-client.js'

// Every test here starts TypeScript child processes.
t.setTimeout(900_000)

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const TOKEN_SCRIPT = join(ROOT, 'scripts', 'token.ts')
/** Starting a TypeScript child process takes seconds, more on a loaded machine. */
const START_TIMEOUT_MS = 120_000

/** Waits until `read()` matches `pattern`, re-checking on every chunk of `child` output. */
async function waitForOutput (child: ChildProcess, read: () => string, pattern: RegExp, timeoutMs = 20_000): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const check = (): boolean => {
      const match = pattern.exec(read())
      if (match === null) return false
      cleanup()
      resolve(match)
      return true
    }
    const onExit = (): void => {
      // The last chunks may arrive after 'exit'.
      setImmediate(() => { if (!check()) { cleanup(); reject(new Error(`exited before ${pattern}: ${read()}`)) } })
    }
    const timer = setTimeout(() => { cleanup(); reject(new Error(`timed out waiting for ${pattern}: ${read()}`)) }, timeoutMs)
    const cleanup = (): void => {
      clearTimeout(timer)
      child.stdout?.off('data', check)
      child.stderr?.off('data', check)
      child.off('exit', onExit)
    }
    child.stdout?.on('data', check)
    child.stderr?.on('data', check)
    child.once('exit', onExit)
    if (!check() && (child.exitCode !== null || child.signalCode !== null)) onExit()
  })
}

type Teardown = Parameters<typeof t.teardown>[0]
interface Launched {
  child: ChildProcess
  output: () => string
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  port: number
  url: string
  wsUrl: string
}

/**
 * Starts src/server.ts (spawnGateway) and waits for it to listen. Like the
 * startGateway helper, with a start-up allowance for a busy machine.
 */
async function launch (t: { teardown: (fn: Teardown) => void }, env: Record<string, string> = {}, opts: { cwd?: string } = {}): Promise<Launched> {
  const started = spawnGateway(env, opts)
  t.teardown(async () => {
    if (started.child.exitCode === null && started.child.signalCode === null) {
      started.child.kill('SIGKILL')
      await started.exited
    }
  })
  const [, port] = await waitForOutput(started.child, started.output, /Server listening at http:\/\/127\.0\.0\.1:(\d+)/, START_TIMEOUT_MS)
  return { ...started, port: Number(port), url: `http://127.0.0.1:${port}`, wsUrl: `ws://127.0.0.1:${port}/ws` }
}

/** Runs `fn` over `items`, at most `limit` at a time (each run starts a TypeScript process). */
/**
 * Connects a client that stops reading (so it never answers the close
 * handshake), sends SIGTERM and waits until the gateway is draining.
 */
async function drainWithStubbornClient (gw: Launched): Promise<TestClient> {
  const { client } = await TestClient.connect(gw.wsUrl, { token: userToken('stubborn') })
  client.ws.pause()
  gw.child.kill('SIGTERM')
  await waitForOutput(gw.child, gw.output, /draining sessions/)
  return client
}

async function pool<T, R> (items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length)
  let next = 0
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++
      results[i] = await fn(items[i])
    }
  }))
  return results
}

/** Resolves with the exit of a process, failing after `timeoutMs`. */
async function exitWithin<T> (exited: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    exited,
    new Promise<T>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`no exit within ${timeoutMs} ms`)), timeoutMs) })
  ]).finally(() => clearTimeout(timer))
}

/** Stderr of a spawned gateway, collected separately from stdout. */
function collectStderr (child: ChildProcess): () => string {
  let stderr = ''
  child.stderr?.on('data', (c: Buffer) => { stderr += c.toString() })
  return () => stderr
}

/** Sends an upgrade on a raw socket and resolves with the status of the answer. */
async function rawUpgrade (port: number, path: string): Promise<{ status: number, socket: Socket }> {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await once(socket, 'connect')
  socket.write([
    `GET ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: Upgrade', 'Upgrade: websocket',
    'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', '', ''
  ].join('\r\n'))
  const [chunk] = await once(socket, 'data') as [Buffer]
  const match = /^HTTP\/1\.1 (\d{3})/.exec(chunk.toString())
  return { status: match === null ? 0 : Number(match[1]), socket }
}

/** The environment of tap (TypeScript loader, coverage) without any gateway setting. */
function baseEnv (): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env }
  for (const name of Object.keys(EnvSchema.properties)) delete env[name]
  return env
}

/** Runs scripts/token.ts like `npm run token`, with tap's loader. */
async function runTokenScript (args: string[], env: Record<string, string>, cwd = ROOT): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, [...process.execArgv, TOKEN_SCRIPT, ...args], {
    cwd,
    env: { ...baseEnv(), ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
  child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  const [code] = await exitWithin(once(child, 'close') as Promise<[number | null]>, START_TIMEOUT_MS)
  return { code, stdout, stderr }
}

async function publishWith (url: string, token: string, title = 'from the test'): Promise<number> {
  const res = await fetch(`${url}/alerts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ target: { all: true }, severity: 'info', title })
  })
  await res.text()
  return res.status
}

t.test('SIGTERM with 20 open sockets: every socket gets 1001, the process exits 0', async (t) => {
  const gw = await launch(t, { SHUTDOWN_TIMEOUT_MS: '5000' })
  const clients = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
    const { client } = await TestClient.connect(gw.wsUrl, { token: userToken(`user-${i}`) })
    return client
  }))
  gw.child.kill('SIGTERM')
  const closes = await Promise.all(clients.map((c) => c.waitClosed(10_000)))
  t.same(closes.map((c) => c.code), new Array(20).fill(1001), 'all 20 closed with 1001')
  const { code, signal } = await exitWithin(gw.exited, 30_000)
  t.equal(code, 0, 'exit code 0')
  t.equal(signal, null)
  t.match(gw.output(), /"signal":"SIGTERM".*shutting down/)
  t.notMatch(gw.output(), /Development mode|User token/, 'no development banner when a key is configured')
})

t.test('draining: /ready answers 503, a client that never answers is cut at SHUTDOWN_TIMEOUT_MS, exit 0', async (t) => {
  const gw = await launch(t, { SHUTDOWN_TIMEOUT_MS: '2000' })
  t.equal((await fetch(`${gw.url}/ready`)).status, 200)
  const client = await drainWithStubbornClient(gw)
  const ready = await fetch(`${gw.url}/ready`)
  t.equal(ready.status, 503, '/ready answers 503 while draining')
  t.equal((await fetch(`${gw.url}/health`)).status, 200, '/health answers 200 while the process lives')
  const { code } = await exitWithin(gw.exited, 15_000)
  t.equal(code, 0, 'exit 0 after terminating the stubborn session')
  t.match(gw.output(), /terminating sessions that did not finish the close handshake/)
  client.ws.resume()
  t.equal((await client.waitClosed()).code, 1001, 'the close frame was sent before the cut')
})

t.test('draining: a new upgrade gets 503 and the process still exits 0', async (t) => {
  const gw = await launch(t, { SHUTDOWN_TIMEOUT_MS: '2000' })
  await drainWithStubbornClient(gw)
  const upgrade = await rawUpgrade(gw.port, `/ws?token=${userToken('late')}`)
  t.equal(upgrade.status, 503, 'an upgrade during the drain is refused with 503')
  // The client hangs up after the refusal, as browsers do.
  upgrade.socket.end()
  const { code } = await exitWithin(gw.exited, 15_000)
  upgrade.socket.destroy()
  t.equal(code, 0, 'exit 0: the refused upgrade did not hold the shutdown')
  t.notMatch(gw.output(), /killed by timeout/)
})

t.test('a second SIGTERM while draining exits at once, non-zero', async (t) => {
  const gw = await launch(t, { SHUTDOWN_TIMEOUT_MS: '60000' })
  const client = await drainWithStubbornClient(gw)
  const second = Date.now()
  gw.child.kill('SIGTERM')
  const { code } = await exitWithin(gw.exited, 10_000)
  t.ok(Date.now() - second < 20_000, 'at once, long before SHUTDOWN_TIMEOUT_MS (60 s)')
  t.not(code, 0, `non-zero exit (${code})`)
  t.match(gw.output(), /second signal, exiting now/)
  client.ws.terminate()
})

t.test('a fatal error shuts the gateway down; a second one while draining exits at once, non-zero', async (t) => {
  const dir = t.testdir({
    // Injects an uncaught exception on SIGWINCH (a signal the gateway does
    // not handle), as a bug in a dependency would.
    'fault.mjs': "let n = 0\nprocess.on('SIGWINCH', () => { n++; setImmediate(() => { throw new Error('injected fault ' + n) }) })\n"
  })
  const gw = await launch(t, {
    NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(join(dir, 'fault.mjs')).href}`,
    SHUTDOWN_TIMEOUT_MS: '60000'
  })
  const { client: polite } = await TestClient.connect(gw.wsUrl, { token: userToken('polite') })
  const { client: stubborn } = await TestClient.connect(gw.wsUrl, { token: userToken('stubborn') })
  // This one does not answer the close handshake: the drain lasts.
  stubborn.ws.pause()
  gw.child.kill('SIGWINCH')
  await waitForOutput(gw.child, gw.output, /draining sessions/)
  t.match(gw.output(), /fatal error, shutting down/, 'the shutdown begins')
  t.match(gw.output(), /injected fault 1/, 'the error is logged')
  t.equal((await polite.waitClosed(30_000)).code, 1001, 'open sockets are told to reconnect elsewhere')
  t.equal(gw.child.exitCode, null, 'still draining')
  gw.child.kill('SIGWINCH')
  const { code } = await exitWithin(gw.exited, 30_000)
  t.equal(code, 1, 'exit 1')
  t.match(gw.output(), /second error, exiting/, 'logged through the app logger')
  stubborn.ws.terminate()
})

t.test('invalid configuration: non-zero exit and one line on stderr naming the variable', async (t) => {
  const dir = t.testdir()
  const cases: Array<[string, Record<string, string>, string]> = [
    ['PORT=abc', { PORT: 'abc' }, 'PORT'],
    ['production without a key', { NODE_ENV: 'production', JWT_SECRET: '', TRUST_PROXY: 'true', SINGLE_INSTANCE: 'true' }, 'JWT_SECRET'],
    ['production without TLS', { NODE_ENV: 'production' }, 'TLS_CERT_FILE'],
    ['an invalid TRUST_PROXY range', { TRUST_PROXY: '10.0.0.1/99' }, 'TRUST_PROXY'],
    ['unreadable TLS files', { TLS_CERT_FILE: join(dir, 'missing-cert.pem'), TLS_KEY_FILE: join(dir, 'missing-key.pem') }, 'TLS_CERT_FILE'],
    ['an unwritable DEV_SECRET_FILE', { JWT_SECRET: '', DEV_SECRET_FILE: join(dir, 'missing', 'dir', '.dev-secret') }, 'DEV_SECRET_FILE']
  ]
  await pool(cases, 2, async ([name, env, variable]) => {
    const started = spawnGateway(env)
    const stderr = collectStderr(started.child)
    const closed = once(started.child, 'close')
    const { code } = await exitWithin(started.exited, START_TIMEOUT_MS)
    // All output has been read once the pipes are closed.
    await closed
    const lines = stderr().split('\n').filter((l) => l !== '')
    t.not(code, 0, `${name}: non-zero exit (${code})`)
    t.equal(lines.length, 1, `${name}: one line on stderr, got ${JSON.stringify(stderr().slice(0, 300))}`)
    t.match(lines[0] ?? '', variable, `${name}: the line names ${variable}`)
    t.notMatch(started.output(), /Server listening/, `${name}: never listened`)
  })
})

t.test('a port already in use: the process exits non-zero', async (t) => {
  const blocker = createServer()
  blocker.listen(0, '127.0.0.1')
  await once(blocker, 'listening')
  t.teardown(() => { blocker.close() })
  const port = (blocker.address() as { port: number }).port
  const started = spawnGateway({ PORT: String(port) })
  const { code } = await exitWithin(started.exited, START_TIMEOUT_MS)
  t.equal(code, 1)
  t.match(started.output(), /could not start/)
  t.match(started.output(), /EADDRINUSE/)
})

t.test('development start without JWT_SECRET', async (t) => {
  const dir = t.testdir()
  const secretFile = join(dir, '.dev-secret')
  const env = { NODE_ENV: 'development', JWT_SECRET: '', DEV_SECRET_FILE: secretFile }
  const gw = await launch(t, env, { cwd: dir })
  const [banner] = await waitForOutput(gw.child, gw.output, /Development mode[\s\S]*More tokens: npm run token[^\n]*\n/)
  const userTokenLine = /User token \(sub dev-user, 12h\):\n {2}(\S+)/.exec(banner)
  const serviceTokenLine = /Service token \(scope alerts:publish, 12h\):\n {2}(\S+)/.exec(banner)
  t.ok(userTokenLine, 'a user token is printed')
  t.ok(serviceTokenLine, 'a service token is printed')
  const printedUser = userTokenLine?.[1] ?? ''
  const printedService = serviceTokenLine?.[1] ?? ''
  t.match(banner, `tokens are signed with the secret in ${secretFile}`)
  const connectLine = /^ {2}(node -e .*)$/m.exec(banner)?.[1] ?? ''
  const publishLine = /^ {2}(curl -i -X POST .*)$/m.exec(banner)?.[1] ?? ''
  t.match(connectLine, `${gw.wsUrl}?token=${printedUser}`, 'the connect command uses the user token and the real address')
  t.match(publishLine, `${gw.url}/alerts`, 'the publish command uses the real address')
  t.match(publishLine, `authorization: Bearer ${printedService}`)
  t.notMatch(gw.output().split('\n').filter((l) => l.startsWith('{')).join('\n'), printedUser, 'the tokens are not in the log lines')

  const mode = statSync(secretFile).mode & 0o777
  t.equal(mode, 0o600, '.dev-secret has mode 0600')
  const secret = readFileSync(secretFile, 'utf8')
  const claims = createVerifier({ key: secret.trim(), algorithms: ['HS256'] })(printedService)
  t.match(claims, { sub: 'dev-service', scope: 'alerts:publish' })
  t.equal(claims.exp - claims.iat, 12 * 3600)

  t.test('the printed tokens work', async (t) => {
    const { client, welcome } = await TestClient.connect(gw.wsUrl, { token: printedUser })
    t.equal(welcome.userId, 'dev-user')
    t.equal(await publishWith(gw.url, printedService, 'printed token'), 202)
    t.match(await client.next('alert'), { title: 'printed token' })
    t.equal(await publishWith(gw.url, printedUser), 403, 'the user token cannot publish')
    await client.close()
  })

  t.test('the printed commands work', async (t) => {
    // The connect command, run from the package folder as the banner says.
    const listener = spawn('sh', ['-c', connectLine], { cwd: ROOT, env: baseEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => { listener.kill() })
    let heard = ''
    listener.stdout.on('data', (c: Buffer) => { heard += c.toString() })
    listener.stderr.on('data', (c: Buffer) => { heard += c.toString() })
    await waitForOutput(listener, () => heard, /"type":"welcome"/)
    const curl = spawn('sh', ['-c', publishLine], { stdio: ['ignore', 'pipe', 'pipe'] })
    let answer = ''
    curl.stdout.on('data', (c: Buffer) => { answer += c.toString() })
    const [code] = await exitWithin(once(curl, 'close') as Promise<[number]>, 20_000)
    t.equal(code, 0, 'curl ran')
    t.match(answer, /^HTTP\/1\.1 202/, 'the publish command is answered 202')
    await waitForOutput(listener, () => heard, /"type":"alert".*"title":"Hello from the gateway"/)
    t.pass('the connected command printed the alert')
  })

  t.test('npm run token mints tokens with the same secret', async (t) => {
    const minted = await runTokenScript(['script-user'], env, dir)
    t.equal(minted.code, 0)
    const { welcome, client } = await TestClient.connect(gw.wsUrl, { token: minted.stdout.trim() })
    t.equal(welcome.userId, 'script-user')
    await client.close()
  })

  t.test('the secret is reused on restart: old tokens keep working', async (t) => {
    gw.child.kill('SIGTERM')
    t.equal((await exitWithin(gw.exited, 30_000)).code, 0)
    const again = await launch(t, env, { cwd: dir })
    await waitForOutput(again.child, again.output, /More tokens/)
    t.equal(readFileSync(secretFile, 'utf8'), secret, 'the file is unchanged')
    t.equal(statSync(secretFile).mode & 0o777, 0o600)
    const { welcome, client } = await TestClient.connect(again.wsUrl, { token: printedUser })
    t.equal(welcome.userId, 'dev-user', 'the token printed by the first run is accepted')
    t.equal(await publishWith(again.url, printedService, 'after restart'), 202)
    t.match(await client.next('alert'), { title: 'after restart' })
    await client.close()
  })
})

t.test('scripts/token.ts', async (t) => {
  const gw = await build(t)
  const env = { NODE_ENV: 'test', JWT_SECRET: TEST_SECRET }
  const verify = createVerifier({ key: TEST_SECRET, algorithms: ['HS256'] })
  const dir = t.testdir()
  const keyFile = join(dir, 'rsa.pem')
  writeFileSync(keyFile, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }))

  const runs: Array<[string[], Record<string, string>]> = [
    [['alice'], env],
    [['svc', '--scope', 'alerts:publish', '--ttl', '600'], env],
    [[], env],
    [['alice', '--bogus'], env],
    [['alice'], { ...env, PORT: 'abc' }],
    [['alice'], { NODE_ENV: 'test', JWT_PUBLIC_KEY_FILE: keyFile }]
  ]
  const [plain, service, none, unknown, badConfig, asymmetric] = await pool(runs, 2, ([args, e]) => runTokenScript(args, e))

  t.test('a user token: sub, one hour, no scope', async (t) => {
    t.equal(plain.code, 0)
    t.equal(plain.stderr, '')
    const claims = verify(plain.stdout.trim())
    t.equal(claims.sub, 'alice')
    t.equal(claims.exp - claims.iat, 3600)
    t.notOk('scope' in claims)
    const { welcome, client } = await TestClient.connect(gw.wsUrl, { token: plain.stdout.trim() })
    t.equal(welcome.userId, 'alice', 'it opens a socket')
    t.equal(await publishWith(gw.url, plain.stdout.trim()), 403, 'it cannot publish')
    await client.close()
  })

  t.test('--scope and --ttl in seconds', async (t) => {
    t.equal(service.code, 0)
    const claims = verify(service.stdout.trim())
    t.equal(claims.scope, 'alerts:publish')
    t.equal(claims.exp - claims.iat, 600)
    t.equal(await publishWith(gw.url, service.stdout.trim()), 202, 'it publishes')
  })

  t.test('usage and a non-zero exit without a sub', async (t) => {
    t.not(none.code, 0)
    t.equal(none.stdout, '', 'no token printed')
    t.match(none.stderr, /^usage: npm run token -- <sub> \[--scope alerts:publish\] \[--ttl 1h\]\n$/)
  })

  t.test('an unknown option', async (t) => {
    t.not(unknown.code, 0)
    t.equal(unknown.stdout, '')
    t.match(unknown.stderr, /--bogus[\s\S]*usage: npm run token/)
  })

  t.test('an invalid configuration', async (t) => {
    t.not(badConfig.code, 0)
    t.match(badConfig.stderr, /^invalid configuration: PORT: /)
  })

  t.test('an asymmetric key cannot mint', async (t) => {
    t.not(asymmetric.code, 0)
    t.equal(asymmetric.stdout, '')
    t.match(asymmetric.stderr, /only with JWT_SECRET or the development secret/)
  })
})
