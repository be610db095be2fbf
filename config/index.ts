import { createPublicKey } from 'node:crypto'
import { accessSync, constants, readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { createSecureContext } from 'node:tls'
import { Compile } from 'typebox/compile'
import { Value } from 'typebox/value'
import { EnvSchema, type Env } from './schema.js'
import { loadOrCreateDevSecret } from './dev-secret.js'

export { EnvSchema } from './schema.js'
export type { Env } from './schema.js'

export interface JwtConfig {
  /** HS* shared secret, or PEM public key for asymmetric algorithms. */
  key?: string
  jwksUrl?: string
  algorithms: string[]
  issuer?: string
  audience?: string
  clockToleranceSec: number
  /** True when the key is the generated development secret. */
  devSecret: boolean
  devSecretFile?: string
}

export interface HostPort {
  host: string
  port: number
}

/** Where Redis is: one server, a Sentinel-managed master, or a Cluster. */
export type RedisTarget =
  | { kind: 'url', url: string }
  | { kind: 'sentinel', sentinels: HostPort[], name: string, username?: string, password?: string, tls: boolean }
  | { kind: 'cluster', nodes: HostPort[], username?: string, password?: string, tls: boolean }

export interface GatewayConfig {
  host: string
  port: number
  env: Env['NODE_ENV']
  logLevel: string
  jwt: JwtConfig
  revocationTtlSec: number
  redisUrl?: string
  /** Null: one instance, in-process bus. */
  redis: RedisTarget | null
  /** Each instance proves its subscription with a probe this often. */
  busProbeIntervalMs: number
  allowedOrigins: Set<string> | null
  tls?: { certFile: string, keyFile: string }
  trustProxy: boolean | number | string[]
  ws: {
    maxMessageBytes: number
    heartbeatIntervalMs: number
    reauthIntervalMs: number
    reauthGraceMs: number
    maxConnectionsPerUser: number
    maxMalformedPerMinute: number
    messageRatePerSecond: number
    messageBurst: number
    sendBufferMaxBytes: number
  }
  limits: {
    maxConnectAttemptsPerMinute: number
    maxConnectionsPerIp: number
    handshakeTimeoutMs: number
    maxPendingHandshakes: number
    /** Upgrades doing their work at once; the other pending ones wait their turn. */
    handshakeConcurrency: number
    ipSlotTtlMs: number
    restRateLimitPerMinute: number
    publishRateLimitPerMinute: number
  }
  history: {
    /** Alerts older than this are gone from history. */
    retentionMs: number
    /** Newest alerts kept per stream; 0: history off. */
    maxEntries: number
  }
  idempotencyWindowMs: number
  spike: {
    windowMs: number
    baselineWindows: number
    factor: number
    minConnects: number
  }
  shutdownTimeoutMs: number
}

/** Thrown for any invalid setting; its message is one line naming the variable. */
export class ConfigError extends Error {
  constructor (variable: string, problem: string) {
    super(`${variable}: ${problem}`)
    this.name = 'ConfigError'
  }
}

const envCheck = Compile(EnvSchema)
const HS = ['HS256', 'HS384', 'HS512']

function describe (variable: string, error: { keyword: string, message: string, params: Record<string, unknown> }): string {
  const choices = (EnvSchema.properties as Record<string, { anyOf?: Array<{ const?: unknown }> }>)[variable].anyOf?.map((option) => option.const)
  if (choices?.every((choice) => typeof choice === 'string') === true) return `must be one of ${choices.join(', ')}`
  if (error.keyword === 'pattern') return 'has an invalid value'
  return error.message
}

/** Values that must never be echoed in an error message. */
const SECRET_VARIABLES = new Set(['JWT_SECRET', 'REDIS_URL', 'REDIS_PASSWORD'])
const INTEGER = /^-?\d+$/
const NUMBER = /^-?\d+(\.\d+)?$/

/** TypeBox conversion rounds "1.5" and reads "true" as 1: refuse those first. */
function checkShape (name: string, value: string): void {
  const type = (EnvSchema.properties as Record<string, { type?: string }>)[name].type
  const ok = type === 'integer'
    ? INTEGER.test(value)
    : type === 'number'
      ? NUMBER.test(value)
      : type === 'boolean' ? value === 'true' || value === 'false' : true
  if (!ok) throw new ConfigError(name, `must be ${type === 'boolean' ? 'true or false' : `a${type === 'integer' ? 'n integer' : ' number'}`} (got ${JSON.stringify(value)})`)
}

function parseEnv (raw: NodeJS.ProcessEnv): Env {
  const picked: Record<string, string> = {}
  for (const name of Object.keys(EnvSchema.properties)) {
    // The contract says an empty string counts as unset.
    if (raw[name] === undefined || raw[name] === '') continue
    const value = (raw[name] as string).trim()
    if (value === '') throw new ConfigError(name, 'is blank (unset it, or give a value)')
    checkShape(name, value)
    picked[name] = value
  }
  const converted = Value.Convert(EnvSchema, Value.Default(EnvSchema, { ...picked }))
  if (!envCheck.Check(converted)) {
    const [first] = envCheck.Errors(converted)
    const variable = first.instancePath.split('/')[1]
    const got = SECRET_VARIABLES.has(variable) ? '' : ` (got ${JSON.stringify(picked[variable])})`
    throw new ConfigError(variable, `${describe(variable, first as never)}${got}`)
  }
  return converted as Env
}

function keyAlgorithms (pem: string, file: string): string[] {
  let key
  try {
    key = createPublicKey(pem)
  } catch {
    throw new ConfigError('JWT_PUBLIC_KEY_FILE', `${file} is not a PEM public key`)
  }
  // Every key createPublicKey returns has a type, and an EC key a curve.
  const family = key.asymmetricKeyType === 'ec'
    ? EC_CURVES[key.asymmetricKeyDetails?.namedCurve as string]
    : KEY_FAMILIES[key.asymmetricKeyType as string]
  if (family === undefined) {
    throw new ConfigError('JWT_PUBLIC_KEY_FILE', `unsupported key (${key.asymmetricKeyType} ${key.asymmetricKeyDetails?.namedCurve ?? ''})`.replace(' )', ')'))
  }
  return family
}

/** Algorithms each key type can verify; the first is the default. */
const KEY_FAMILIES: Record<string, string[]> = {
  rsa: ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'],
  'rsa-pss': ['PS256', 'PS384', 'PS512'],
  ed25519: ['EdDSA']
}
const EC_CURVES: Record<string, string[]> = {
  prime256v1: ['ES256'],
  secp384r1: ['ES384'],
  secp521r1: ['ES512']
}

/** Every JWS algorithm a key can verify (`none` is not one). */
const ALGORITHMS = new Set([...HS, ...Object.values(KEY_FAMILIES).flat(), ...Object.values(EC_CURVES).flat()])

function checkAlgorithms (algorithms: string[], symmetric: boolean): void {
  for (const alg of algorithms) {
    if (alg.toLowerCase() === 'none') throw new ConfigError('JWT_ALGORITHMS', '"none" is never accepted')
    if (!ALGORITHMS.has(alg)) throw new ConfigError('JWT_ALGORITHMS', `has an invalid value: ${alg} is not one of ${[...ALGORITHMS].join(', ')}`)
    const isHs = HS.includes(alg)
    if (symmetric !== isHs) {
      throw new ConfigError('JWT_ALGORITHMS', `${alg} does not match the configured key (${symmetric ? 'JWT_SECRET is an HMAC secret' : 'an asymmetric key is configured'})`)
    }
  }
}

/** The URL with a host whose credentials decode (what its client will do with them), or null. */
function parseUrl (value: string): URL | null {
  try {
    const url = new URL(value)
    decodeURIComponent(url.username)
    decodeURIComponent(url.password)
    return url.hostname === '' ? null : url
  } catch {
    return null
  }
}

function buildJwt (env: Env, cwd: string): JwtConfig {
  const sources = ['JWT_SECRET', 'JWT_PUBLIC_KEY_FILE', 'JWT_JWKS_URL'].filter((n) => env[n as keyof Env] !== undefined)
  if (sources.length > 1) throw new ConfigError(sources[1], `set exactly one of JWT_SECRET, JWT_PUBLIC_KEY_FILE, JWT_JWKS_URL (also got ${sources[0]})`)
  const requested = env.JWT_ALGORITHMS?.split(',')
  const base = {
    issuer: env.JWT_ISSUER,
    audience: env.JWT_AUDIENCE,
    clockToleranceSec: env.JWT_CLOCK_TOLERANCE_SECONDS,
    devSecret: false
  }

  if (env.JWT_PUBLIC_KEY_FILE !== undefined) {
    let pem: string
    try {
      pem = readFileSync(env.JWT_PUBLIC_KEY_FILE, 'utf8')
    } catch (err) {
      throw new ConfigError('JWT_PUBLIC_KEY_FILE', `cannot read ${env.JWT_PUBLIC_KEY_FILE} (${(err as NodeJS.ErrnoException).code})`)
    }
    const supported = keyAlgorithms(pem, env.JWT_PUBLIC_KEY_FILE)
    const algorithms = requested ?? supported.slice(0, 1)
    checkAlgorithms(algorithms, false)
    for (const alg of algorithms) {
      if (!supported.includes(alg)) throw new ConfigError('JWT_ALGORITHMS', `${alg} cannot be verified with the key in JWT_PUBLIC_KEY_FILE (it supports ${supported.join(', ')})`)
    }
    return { ...base, key: pem, algorithms }
  }
  if (env.JWT_JWKS_URL !== undefined) {
    if (parseUrl(env.JWT_JWKS_URL) === null) throw new ConfigError('JWT_JWKS_URL', `${JSON.stringify(env.JWT_JWKS_URL)} is not an http(s) URL with a host`)
    const algorithms = requested ?? ['RS256']
    checkAlgorithms(algorithms, false)
    return { ...base, jwksUrl: env.JWT_JWKS_URL, algorithms }
  }
  const algorithms = requested ?? ['HS256']
  checkAlgorithms(algorithms, true)
  if (env.JWT_SECRET !== undefined) {
    if (Buffer.byteLength(env.JWT_SECRET) < 32) throw new ConfigError('JWT_SECRET', 'must be at least 32 bytes')
    return { ...base, key: env.JWT_SECRET, algorithms }
  }
  if (env.NODE_ENV === 'production') {
    throw new ConfigError('JWT_SECRET', 'production needs a JWT key: set JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL')
  }
  const file = env.DEV_SECRET_FILE
  let key: string
  try {
    key = loadOrCreateDevSecret(file, cwd)
  } catch (err) {
    throw new ConfigError('DEV_SECRET_FILE', (err as Error).message)
  }
  return { ...base, key, algorithms, devSecret: true, devSecretFile: file }
}

function isTrustEntry (entry: string): boolean {
  if (['loopback', 'linklocal', 'uniquelocal'].includes(entry)) return true
  const [address, prefix, extra] = entry.split('/')
  const family = isIP(address)
  if (family === 0 || extra !== undefined) return false
  if (prefix === undefined) return true
  return /^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128)
}

function parseTrustProxy (value: string): boolean | number | string[] {
  const lowered = value.toLowerCase()
  if (lowered === 'false' || lowered === '0' || lowered === 'no') return false
  if (lowered === 'true' || lowered === 'yes') return true
  if (/^\d+$/.test(value)) return Number(value)
  const list = value.split(',').map((s) => s.trim())
  for (const entry of list) {
    if (!isTrustEntry(entry)) throw new ConfigError('TRUST_PROXY', `${JSON.stringify(entry)} is not true, false, a hop count, an address or a CIDR`)
  }
  return list
}

const DEFAULT_PORT: Record<string, string> = { 'http:': '80', 'https:': '443' }

/**
 * Normalises an origin for comparison: lower case, default port dropped.
 * Only a serialized origin (`scheme://host[:port]`, what `new URL(x).origin`
 * gives back) is one: a path, credentials, a query or percent-escapes make
 * the value no origin at all (null), never a lookalike of an allowed one.
 */
export function normaliseOrigin (origin: string): string | null {
  const lowered = origin.toLowerCase()
  let url: URL
  try {
    url = new URL(lowered)
  } catch {
    return null
  }
  const port = DEFAULT_PORT[url.protocol]
  if (port === undefined) return null
  // URL drops the scheme's default port; an explicit one is still the same origin.
  if (lowered !== url.origin && lowered !== `${url.origin}:${port}`) return null
  return url.origin
}

function parseOrigins (value: string | undefined): Set<string> | null {
  if (value === undefined) return null
  const set = new Set<string>()
  for (const entry of value.split(',').map((s) => s.trim()).filter(Boolean)) {
    const normalised = normaliseOrigin(entry)
    if (normalised === null) throw new ConfigError('ALLOWED_ORIGINS', `${JSON.stringify(entry)} is not an http(s) origin (scheme://host[:port], nothing after it)`)
    set.add(normalised)
  }
  // Every browser-style upgrade would be refused: say so now.
  if (set.size === 0) throw new ConfigError('ALLOWED_ORIGINS', 'lists no origin (unset it to allow any)')
  return set
}

function checkReadable (variable: string, file: string | undefined): void {
  if (file === undefined) return
  try {
    accessSync(file, constants.R_OK)
  } catch (err) {
    throw new ConfigError(variable, `cannot read ${JSON.stringify(file)} (${(err as NodeJS.ErrnoException).code})`)
  }
}

/** The TLS files make a certificate and its key: checked now, not when the server is built. */
function checkTlsPair (certFile: string, keyFile: string): void {
  try {
    createSecureContext({ cert: readFileSync(certFile), key: readFileSync(keyFile) })
  } catch (err) {
    const reason = String((err as Error).message).split('\n')[0]
    throw new ConfigError('TLS_CERT_FILE', `TLS_CERT_FILE and TLS_KEY_FILE are not a certificate and its private key in PEM (${reason})`)
  }
}

function checkProductionRules (env: Env, trustProxy: GatewayConfig['trustProxy']): void {
  const hasTls = env.TLS_CERT_FILE !== undefined
  if (env.TLS_CERT_FILE !== undefined && env.TLS_KEY_FILE === undefined) throw new ConfigError('TLS_KEY_FILE', 'must be set together with TLS_CERT_FILE')
  if (env.TLS_KEY_FILE !== undefined && env.TLS_CERT_FILE === undefined) throw new ConfigError('TLS_CERT_FILE', 'must be set together with TLS_KEY_FILE')
  checkReadable('TLS_CERT_FILE', env.TLS_CERT_FILE)
  checkReadable('TLS_KEY_FILE', env.TLS_KEY_FILE)
  if (env.TLS_CERT_FILE !== undefined && env.TLS_KEY_FILE !== undefined) checkTlsPair(env.TLS_CERT_FILE, env.TLS_KEY_FILE)
  if (env.NODE_ENV !== 'production') return
  if (!hasTls && trustProxy === false) {
    throw new ConfigError('TLS_CERT_FILE', 'production needs TLS: set TLS_CERT_FILE and TLS_KEY_FILE, or TRUST_PROXY for a TLS-terminating proxy')
  }
  if (env.REDIS_URL === undefined && env.REDIS_SENTINELS === undefined && env.REDIS_CLUSTER_NODES === undefined && !env.SINGLE_INSTANCE) {
    throw new ConfigError('REDIS_URL', 'production needs REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES (or SINGLE_INSTANCE=true to run one instance on purpose)')
  }
}

function parseHosts (list: string): HostPort[] {
  return list.split(',').map((entry) => {
    const at = entry.lastIndexOf(':')
    return { host: entry.slice(0, at), port: Number(entry.slice(at + 1)) }
  })
}

/** At most one of REDIS_URL, REDIS_SENTINELS, REDIS_CLUSTER_NODES. */
function parseRedis (env: Env): RedisTarget | null {
  const set = (['REDIS_URL', 'REDIS_SENTINELS', 'REDIS_CLUSTER_NODES'] as const).filter((name) => env[name] !== undefined)
  if (set.length > 1) throw new ConfigError(set[1], `set only one of REDIS_URL, REDIS_SENTINELS, REDIS_CLUSTER_NODES (${set.join(' and ')} are set)`)
  for (const [name, value] of [['REDIS_SENTINELS', env.REDIS_SENTINELS], ['REDIS_CLUSTER_NODES', env.REDIS_CLUSTER_NODES]] as const) {
    if (value !== undefined && parseHosts(value).some((node) => node.port < 1 || node.port > 65535)) throw new ConfigError(name, 'has a port outside 1-65535')
  }
  if (env.REDIS_SENTINELS !== undefined && env.REDIS_SENTINEL_NAME === undefined) throw new ConfigError('REDIS_SENTINEL_NAME', 'is required with REDIS_SENTINELS (the master\'s name)')
  if (env.REDIS_SENTINEL_NAME !== undefined && env.REDIS_SENTINELS === undefined) throw new ConfigError('REDIS_SENTINELS', 'is required with REDIS_SENTINEL_NAME')
  const credentials = { username: env.REDIS_USERNAME, password: env.REDIS_PASSWORD, tls: env.REDIS_TLS }
  if (env.REDIS_SENTINELS !== undefined) return { kind: 'sentinel', sentinels: parseHosts(env.REDIS_SENTINELS), name: env.REDIS_SENTINEL_NAME as string, ...credentials }
  if (env.REDIS_CLUSTER_NODES !== undefined) return { kind: 'cluster', nodes: parseHosts(env.REDIS_CLUSTER_NODES), ...credentials }
  if (env.REDIS_URL !== undefined) {
    checkRedisUrl(env.REDIS_URL)
    return { kind: 'url', url: env.REDIS_URL }
  }
  return null
}

/**
 * What ioredis parses at start, checked here: a malformed URL would
 * otherwise stop the process with a stack trace that quotes it, password
 * included. The value is never echoed.
 */
function checkRedisUrl (value: string): void {
  const url = parseUrl(value)
  if (url === null || url.port === '0') {
    throw new ConfigError('REDIS_URL', 'is not a valid URL: redis[s]://[[user]:password@]host[:port][/db], port 1-65535, a # or % in the password percent-encoded')
  }
}

/**
 * Reads the configuration from the environment. Throws a ConfigError whose
 * message is one line naming the offending variable.
 */
export function loadConfig (raw: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): GatewayConfig {
  const env = parseEnv(raw)
  const trustProxy = parseTrustProxy(env.TRUST_PROXY)
  checkProductionRules(env, trustProxy)
  const jwt = buildJwt(env, cwd)
  return {
    host: env.HOST,
    port: env.PORT,
    env: env.NODE_ENV,
    logLevel: env.LOG_LEVEL,
    jwt,
    revocationTtlSec: env.REVOCATION_TTL_SECONDS,
    redisUrl: env.REDIS_URL,
    redis: parseRedis(env),
    busProbeIntervalMs: env.BUS_PROBE_INTERVAL_MS,
    allowedOrigins: parseOrigins(env.ALLOWED_ORIGINS),
    tls: env.TLS_CERT_FILE !== undefined && env.TLS_KEY_FILE !== undefined
      ? { certFile: env.TLS_CERT_FILE, keyFile: env.TLS_KEY_FILE }
      : undefined,
    trustProxy,
    ws: {
      maxMessageBytes: env.WS_MAX_MESSAGE_BYTES,
      heartbeatIntervalMs: env.HEARTBEAT_INTERVAL_MS,
      reauthIntervalMs: env.REAUTH_INTERVAL_MS,
      reauthGraceMs: env.REAUTH_GRACE_MS,
      maxConnectionsPerUser: env.MAX_CONNECTIONS_PER_USER,
      maxMalformedPerMinute: env.MAX_MALFORMED_PER_MINUTE,
      messageRatePerSecond: env.MESSAGE_RATE_PER_SECOND,
      messageBurst: Math.max(env.MESSAGE_BURST, env.MESSAGE_RATE_PER_SECOND),
      sendBufferMaxBytes: env.SEND_BUFFER_MAX_BYTES
    },
    limits: {
      maxConnectAttemptsPerMinute: env.MAX_CONNECT_ATTEMPTS_PER_MINUTE,
      maxConnectionsPerIp: env.MAX_CONNECTIONS_PER_IP,
      handshakeTimeoutMs: env.HANDSHAKE_TIMEOUT_MS,
      maxPendingHandshakes: env.MAX_PENDING_HANDSHAKES,
      handshakeConcurrency: env.HANDSHAKE_CONCURRENCY,
      ipSlotTtlMs: env.IP_SLOT_TTL_MS,
      restRateLimitPerMinute: env.REST_RATE_LIMIT_PER_MINUTE,
      publishRateLimitPerMinute: env.PUBLISH_RATE_LIMIT_PER_MINUTE
    },
    history: {
      retentionMs: env.HISTORY_RETENTION_MS,
      maxEntries: env.HISTORY_MAX_ENTRIES
    },
    idempotencyWindowMs: env.IDEMPOTENCY_WINDOW_MS,
    spike: {
      windowMs: env.SPIKE_WINDOW_MS,
      baselineWindows: env.SPIKE_BASELINE_WINDOWS,
      factor: env.SPIKE_FACTOR,
      minConnects: env.SPIKE_MIN_CONNECTS
    },
    shutdownTimeoutMs: env.SHUTDOWN_TIMEOUT_MS
  }
}
