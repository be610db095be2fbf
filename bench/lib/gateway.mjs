import { spawnSync } from 'node:child_process'
import { readdirSync, statSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { BENCH_SECRET } from './tokens.mjs'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/**
 * The bench's own build of the gateway: `tsc -p tsconfig.build.json` with
 * its output under node_modules/.cache, so another session cleaning or
 * rebuilding dist/ in a shared working tree cannot pull it away mid-run.
 * Packages resolve from the project's node_modules as they do from dist/.
 */
export const BUILD_DIR = path.join(ROOT, 'node_modules/.cache/alert-gateway-bench/dist')
export const GATEWAY_SCRIPT = path.join(BUILD_DIR, 'src/server.js')

function newestMtime (dir) {
  let newest = 0
  for (const entry of readdirSync(path.join(ROOT, dir), { recursive: true })) {
    if (!String(entry).endsWith('.ts')) continue
    newest = Math.max(newest, statSync(path.join(ROOT, dir, String(entry))).mtimeMs)
  }
  return newest
}

/**
 * Compiles the gateway when the bench's build is missing or older than a
 * source file (`auto`), always (`always`) or never (`never`).
 */
export function ensureBuilt (mode = 'auto', log = (line) => process.stderr.write(`[bench] ${line}\n`)) {
  if (mode === 'never') return
  let built = 0
  try { built = statSync(GATEWAY_SCRIPT).mtimeMs } catch {}
  const sources = Math.max(...['src', 'plugins', 'routes', 'config', 'protocol', 'client'].map(newestMtime))
  if (mode === 'auto' && built > sources) return
  log(`compiling the gateway: tsc -p tsconfig.build.json --outDir ${path.relative(ROOT, BUILD_DIR)}`)
  const tsc = path.join(ROOT, 'node_modules/typescript/bin/tsc')
  const result = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', BUILD_DIR], { cwd: ROOT, stdio: 'inherit' })
  if (result.status !== 0) throw new Error('the gateway does not compile')
}

/** The only variables a server under test inherits from the bench. */
export function baseEnv () {
  return { PATH: process.env.PATH, HOME: process.env.HOME ?? os.homedir(), LANG: 'C' }
}

/**
 * The environment of a server under test (both references read the same
 * HOST, PORT, JWT_SECRET, REDIS_URL, HEARTBEAT_INTERVAL_MS).
 */
export function serverEnv ({ port, redisUrl, heartbeatMs }) {
  const env = { ...baseEnv(), HOST: '127.0.0.1', PORT: String(port), JWT_SECRET: BENCH_SECRET, REDIS_URL: redisUrl }
  if (heartbeatMs !== undefined) env.HEARTBEAT_INTERVAL_MS = String(heartbeatMs)
  return env
}

/**
 * The gateway's environment: development mode (production needs TLS), warn
 * logs (Fastify's per-request info lines are not what is measured), and
 * limits raised so they are never hit (they still run, Redis calls
 * included). `extra` is added last: `{ HISTORY_MAX_ENTRIES: '0' }` turns
 * history off.
 */
export function gatewayEnv ({ port, redisUrl, heartbeatMs, extra = {} }) {
  return {
    ...serverEnv({ port, redisUrl, heartbeatMs }),
    NODE_ENV: 'development',
    LOG_LEVEL: 'warn',
    MAX_CONNECTIONS_PER_IP: '10000000',
    MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000',
    REST_RATE_LIMIT_PER_MINUTE: '100000000',
    PUBLISH_RATE_LIMIT_PER_MINUTE: '100000000',
    MAX_PENDING_HANDSHAKES: '100000',
    SHUTDOWN_TIMEOUT_MS: '2000',
    ...extra
  }
}

/** History off: the gateway started a second time with this, for A/B runs in one run. */
export const HISTORY_OFF = Object.freeze({ HISTORY_MAX_ENTRIES: '0' })

/** Median of a list of numbers (NaN when empty). */
export function median (values) {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b)
  if (sorted.length === 0) return NaN
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/**
 * The commit the gateway's sources are at, marked when src/, plugins/,
 * routes/, config/ or protocol/ have uncommitted changes (the working tree
 * is shared: say what was measured).
 */
export function gatewayCommit () {
  const git = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout.trim()
  const dirty = spawnSync('git', ['status', '--porcelain', '--', 'src', 'plugins', 'routes', 'config', 'protocol'], { cwd: ROOT, encoding: 'utf8' }).stdout.trim() !== ''
  return `${git}${dirty ? ' (with uncommitted changes)' : ''}`
}

/** `--name=value` of the command line, or `fallback`. */
export const arg = (name, fallback) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback

/** Whether `--name` is on the command line. */
export const flag = (name) => process.argv.includes(`--${name}`)

/** `--build` / `--no-build` / neither, as ensureBuilt's mode. */
export const buildMode = () => flag('build') ? 'always' : flag('no-build') ? 'never' : 'auto'

/**
 * What a run measured on: date, Node, CPUs, load, the gateway's commit, and
 * `extra` (the run's options). Prints the header line `<name> <date>: ...`.
 */
export function runMeta (name, extra = {}) {
  const meta = { date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? 'unknown', loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100), gatewayCommit: gatewayCommit(), ...extra }
  process.stdout.write(`${name} ${meta.date}: ${meta.cpus} x ${meta.cpuModel}, node ${meta.node}, load ${meta.loadAverageAtStart.join(' ')}; gateway ${meta.gatewayCommit}\n`)
  return meta
}
