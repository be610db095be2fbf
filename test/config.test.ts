import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import * as fs from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { ConfigError, loadConfig, normaliseOrigin, type GatewayConfig } from '../config/index.js'
import { TEST_SECRET } from './helpers/tokens.js'
import { makeCerts } from './helpers/certs.js'

// loadConfig checks that the TLS files are a certificate and its key.
const CERTS = makeCerts(mkdtempSync(join(tmpdir(), 'config-certs-')))
t.teardown(() => { rmSync(dirname(CERTS.certFile), { recursive: true, force: true }) })
const READABLE_CERT = CERTS.certFile
const READABLE_KEY = CERTS.keyFile
// Readable files that are no certificate or key.
const NOT_A_CERT = fileURLToPath(new URL('./helpers/certs.ts', import.meta.url))

type Env = Record<string, string | undefined>

/** Every variable of the contract table (DESIGN.md), with its default. */
const CONTRACT_VARIABLES = [
  'HOST', 'PORT', 'NODE_ENV', 'JWT_SECRET', 'JWT_PUBLIC_KEY_FILE', 'JWT_ALGORITHMS', 'JWT_ISSUER', 'JWT_AUDIENCE',
  'REDIS_URL', 'ALLOWED_ORIGINS', 'TLS_CERT_FILE', 'TLS_KEY_FILE', 'TRUST_PROXY', 'WS_MAX_MESSAGE_BYTES',
  'HEARTBEAT_INTERVAL_MS', 'REAUTH_INTERVAL_MS', 'REAUTH_GRACE_MS', 'MAX_CONNECTIONS_PER_USER',
  'MAX_CONNECT_ATTEMPTS_PER_MINUTE', 'MAX_CONNECTIONS_PER_IP', 'SHUTDOWN_TIMEOUT_MS', 'LOG_LEVEL',
  'REDIS_SENTINELS', 'REDIS_SENTINEL_NAME', 'REDIS_CLUSTER_NODES', 'REDIS_USERNAME', 'REDIS_PASSWORD', 'REDIS_TLS',
  'BUS_PROBE_INTERVAL_MS', 'HISTORY_RETENTION_MS', 'HISTORY_MAX_ENTRIES', 'IDEMPOTENCY_WINDOW_MS',
  'PUBLISH_RATE_LIMIT_PER_MINUTE', 'REST_RATE_LIMIT_PER_MINUTE'
]

const withSecret = (env: Env = {}): Env => ({ NODE_ENV: 'test', JWT_SECRET: TEST_SECRET, ...env })

function publicPem (key: KeyObject): string {
  return key.export({ type: 'spki', format: 'pem' }).toString()
}

/** Writes `content` to a file of a fresh test directory; returns its path. */
function keyFile (dir: string, name: string, content: string): string {
  const path = join(dir, name)
  writeFileSync(path, content)
  return path
}

/** Asserts that loadConfig refuses `env` with a one-line ConfigError naming `variable`. */
function refuses (t: Test, env: Env, variable: string, cwd?: string): ConfigError {
  let caught: unknown
  try {
    loadConfig(env as NodeJS.ProcessEnv, cwd ?? t.testdirName)
  } catch (err) {
    caught = err
  }
  if (!(caught instanceof ConfigError)) {
    t.fail(`${JSON.stringify(env)} throws a ConfigError naming ${variable}`, { found: caught })
    return new ConfigError(variable, 'was not thrown')
  }
  const error = caught
  t.equal(error.name, 'ConfigError')
  t.match(error.message, new RegExp(`^${variable}: \\S`), `the message names ${variable}: ${error.message}`)
  t.notMatch(error.message, /[\r\n]/, 'the message is one line')
  return error
}

function assertContractDefaults (t: Test, config: GatewayConfig): void {
  t.equal(config.host, '127.0.0.1', 'HOST')
  t.equal(config.port, 3000, 'PORT')
  t.equal(config.env, 'development', 'NODE_ENV')
  t.same(config.jwt.algorithms, ['HS256'], 'JWT_ALGORITHMS')
  t.equal(config.jwt.issuer, undefined, 'JWT_ISSUER')
  t.equal(config.jwt.audience, undefined, 'JWT_AUDIENCE')
  t.equal(config.jwt.jwksUrl, undefined, 'JWT_JWKS_URL')
  t.equal(config.redisUrl, undefined, 'REDIS_URL')
  t.equal(config.allowedOrigins, null, 'ALLOWED_ORIGINS')
  t.equal(config.tls, undefined, 'TLS_CERT_FILE / TLS_KEY_FILE')
  t.equal(config.trustProxy, false, 'TRUST_PROXY')
  t.equal(config.ws.maxMessageBytes, 10240, 'WS_MAX_MESSAGE_BYTES')
  t.equal(config.ws.heartbeatIntervalMs, 30000, 'HEARTBEAT_INTERVAL_MS')
  t.equal(config.ws.reauthIntervalMs, 900000, 'REAUTH_INTERVAL_MS')
  t.equal(config.ws.reauthGraceMs, 30000, 'REAUTH_GRACE_MS')
  t.equal(config.ws.maxConnectionsPerUser, 1, 'MAX_CONNECTIONS_PER_USER')
  t.equal(config.limits.maxConnectAttemptsPerMinute, 5, 'MAX_CONNECT_ATTEMPTS_PER_MINUTE')
  t.equal(config.limits.maxConnectionsPerIp, 100, 'MAX_CONNECTIONS_PER_IP')
  t.equal(config.shutdownTimeoutMs, 10000, 'SHUTDOWN_TIMEOUT_MS')
  t.equal(config.logLevel, 'info', 'LOG_LEVEL')
}

t.test('defaults: every contract variable unset', async (t) => {
  const dir = t.testdir()
  const config = loadConfig({}, dir)
  assertContractDefaults(t, config)
  // No key in development: the generated development secret is used.
  t.equal(config.jwt.devSecret, true)
  t.equal(config.jwt.devSecretFile, '.dev-secret')
  t.ok(existsSync(join(dir, '.dev-secret')))
})

t.test('an empty string counts as unset, for every contract variable', async (t) => {
  const dir = t.testdir()
  const empty = Object.fromEntries(CONTRACT_VARIABLES.map((name) => [name, '']))
  assertContractDefaults(t, loadConfig(empty, dir))
})

t.test('values are trimmed', async (t) => {
  const config = loadConfig(withSecret({ PORT: ' 8080 ', HOST: ' 0.0.0.0 ' }), t.testdir())
  t.equal(config.port, 8080)
  t.equal(config.host, '0.0.0.0')
})

t.test('without arguments it reads process.env', async (t) => {
  const saved = { JWT_SECRET: process.env.JWT_SECRET, NODE_ENV: process.env.NODE_ENV, PORT: process.env.PORT }
  t.teardown(() => {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name]
      else process.env[name] = value
    }
  })
  process.env.JWT_SECRET = TEST_SECRET
  process.env.NODE_ENV = 'test'
  process.env.PORT = '4321'
  const config = loadConfig()
  t.equal(config.port, 4321)
  t.equal(config.jwt.key, TEST_SECRET)
})

t.test('every setting is carried into the configuration', async (t) => {
  const config = loadConfig(withSecret({
    HOST: '0.0.0.0',
    PORT: '8443',
    LOG_LEVEL: 'warn',
    JWT_ISSUER: 'https://idp.example',
    JWT_AUDIENCE: 'alerts',
    JWT_ALGORITHMS: 'HS384,HS512',
    JWT_CLOCK_TOLERANCE_SECONDS: '5',
    REVOCATION_TTL_SECONDS: '3600',
    REDIS_URL: 'rediss://redis.example:6380',
    SINGLE_INSTANCE: 'true',
    ALLOWED_ORIGINS: 'https://App.Example.com:443, http://localhost:3000,',
    TLS_CERT_FILE: READABLE_CERT,
    TLS_KEY_FILE: READABLE_KEY,
    TRUST_PROXY: '2',
    WS_MAX_MESSAGE_BYTES: '2048',
    HEARTBEAT_INTERVAL_MS: '1000',
    REAUTH_INTERVAL_MS: '60000',
    REAUTH_GRACE_MS: '5000',
    MAX_CONNECTIONS_PER_USER: '3',
    MAX_CONNECT_ATTEMPTS_PER_MINUTE: '7',
    MAX_CONNECTIONS_PER_IP: '9',
    SHUTDOWN_TIMEOUT_MS: '2500',
    MAX_MALFORMED_PER_MINUTE: '4',
    MESSAGE_RATE_PER_SECOND: '30',
    MESSAGE_BURST: '10',
    SEND_BUFFER_MAX_BYTES: '4096',
    HANDSHAKE_TIMEOUT_MS: '3000',
    MAX_PENDING_HANDSHAKES: '50',
    HANDSHAKE_CONCURRENCY: '8',
    IP_SLOT_TTL_MS: '5000',
    REST_RATE_LIMIT_PER_MINUTE: '100',
    PUBLISH_RATE_LIMIT_PER_MINUTE: '1000',
    SPIKE_WINDOW_MS: '1000',
    SPIKE_BASELINE_WINDOWS: '3',
    SPIKE_FACTOR: '2.5',
    SPIKE_MIN_CONNECTS: '10'
  }), t.testdir())
  t.equal(config.host, '0.0.0.0')
  t.equal(config.port, 8443)
  t.equal(config.env, 'test')
  t.equal(config.logLevel, 'warn')
  t.same(config.jwt, {
    key: TEST_SECRET,
    algorithms: ['HS384', 'HS512'],
    issuer: 'https://idp.example',
    audience: 'alerts',
    clockToleranceSec: 5,
    devSecret: false
  })
  t.equal(config.revocationTtlSec, 3600)
  t.equal(config.redisUrl, 'rediss://redis.example:6380')
  t.same([...config.allowedOrigins ?? []], ['https://app.example.com', 'http://localhost:3000'])
  t.same(config.tls, { certFile: READABLE_CERT, keyFile: READABLE_KEY })
  t.equal(config.trustProxy, 2)
  t.same(config.ws, {
    maxMessageBytes: 2048,
    heartbeatIntervalMs: 1000,
    reauthIntervalMs: 60000,
    reauthGraceMs: 5000,
    maxConnectionsPerUser: 3,
    maxMalformedPerMinute: 4,
    messageRatePerSecond: 30,
    // The burst is never below the steady rate.
    messageBurst: 30,
    sendBufferMaxBytes: 4096
  })
  t.same(config.limits, {
    maxConnectAttemptsPerMinute: 7,
    maxConnectionsPerIp: 9,
    handshakeTimeoutMs: 3000,
    maxPendingHandshakes: 50,
    handshakeConcurrency: 8,
    ipSlotTtlMs: 5000,
    restRateLimitPerMinute: 100,
    publishRateLimitPerMinute: 1000
  })
  t.same(config.spike, { windowMs: 1000, baselineWindows: 3, factor: 2.5, minConnects: 10 })
  t.equal(config.shutdownTimeoutMs, 2500)
})

t.test('invalid values throw a one-line ConfigError naming the variable', async (t) => {
  refuses(t, withSecret({ PORT: 'abc' }), 'PORT')
  refuses(t, withSecret({ PORT: '70000' }), 'PORT')
  refuses(t, withSecret({ PORT: '-1' }), 'PORT')
  refuses(t, withSecret({ PORT: '3000abc' }), 'PORT')
  refuses(t, withSecret({ WS_MAX_MESSAGE_BYTES: '-1' }), 'WS_MAX_MESSAGE_BYTES')
  refuses(t, withSecret({ NODE_ENV: 'bogus' }), 'NODE_ENV')
  refuses(t, withSecret({ LOG_LEVEL: 'loud' }), 'LOG_LEVEL')
  refuses(t, withSecret({ HEARTBEAT_INTERVAL_MS: '0' }), 'HEARTBEAT_INTERVAL_MS')
  refuses(t, withSecret({ MAX_CONNECTIONS_PER_USER: '0' }), 'MAX_CONNECTIONS_PER_USER')
  refuses(t, withSecret({ SHUTDOWN_TIMEOUT_MS: 'soon' }), 'SHUTDOWN_TIMEOUT_MS')
  refuses(t, withSecret({ SINGLE_INSTANCE: 'maybe' }), 'SINGLE_INSTANCE')
  t.match(refuses(t, withSecret({ SPIKE_FACTOR: 'lots' }), 'SPIKE_FACTOR').message, /must be a number/)
  refuses(t, withSecret({ REDIS_URL: 'http://redis:6379' }), 'REDIS_URL')
  refuses(t, withSecret({ HOST: '   ' }), 'HOST')
  refuses(t, { NODE_ENV: 'test', JWT_JWKS_URL: 'ftp://idp.example/jwks' }, 'JWT_JWKS_URL')
  const lower = refuses(t, withSecret({ JWT_ALGORITHMS: 'hs256' }), 'JWT_ALGORITHMS')
  t.match(lower.message, /invalid value/)
  // Regression: the pattern refused EdDSA (lower-case d), so an Ed25519 JWKS could not be configured.
  t.same(loadConfig({ NODE_ENV: 'test', JWT_JWKS_URL: 'https://idp.example/jwks', JWT_ALGORITHMS: 'EdDSA' }).jwt.algorithms, ['EdDSA'])
})

t.test('numbers that are not plain integers are refused, not rounded', async (t) => {
  // Regression: a lenient conversion turned PORT=1.5 into 1 and PORT=true into 1.
  refuses(t, withSecret({ PORT: '1.5' }), 'PORT')
  refuses(t, withSecret({ PORT: 'true' }), 'PORT')
  refuses(t, withSecret({ HEARTBEAT_INTERVAL_MS: '100.9' }), 'HEARTBEAT_INTERVAL_MS')
  refuses(t, withSecret({ MAX_CONNECTIONS_PER_USER: '2.5' }), 'MAX_CONNECTIONS_PER_USER')
})

t.test('JWT_SECRET', async (t) => {
  t.test('shorter than 32 bytes is refused', async (t) => {
    refuses(t, { NODE_ENV: 'test', JWT_SECRET: 'x'.repeat(31) }, 'JWT_SECRET')
  })
  t.test('exactly 32 bytes is accepted', async (t) => {
    t.equal(loadConfig({ NODE_ENV: 'test', JWT_SECRET: 'x'.repeat(32) }, t.testdir()).jwt.key, 'x'.repeat(32))
  })
  t.test('the length is counted in bytes, as the contract says', async (t) => {
    // 20 characters, 40 bytes of UTF-8.
    const secret = 'é'.repeat(20)
    t.equal(loadConfig({ NODE_ENV: 'test', JWT_SECRET: secret }, t.testdir()).jwt.key, secret)
  })
  t.test('a refused secret is not echoed in the error', async (t) => {
    const secret = 'hunter2-but-too-short'
    const error = refuses(t, { NODE_ENV: 'test', JWT_SECRET: secret }, 'JWT_SECRET')
    t.notMatch(error.message, secret, 'the secret does not reach stderr or the logs')
  })
})

t.test('JWT_ALGORITHMS', async (t) => {
  const dir = t.testdir()
  const rsa = keyFile(dir, 'rsa.pem', publicPem(generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey))

  t.test('none is never accepted, in any spelling', async (t) => {
    refuses(t, withSecret({ JWT_ALGORITHMS: 'none' }), 'JWT_ALGORITHMS')
    const upper = refuses(t, withSecret({ JWT_ALGORITHMS: 'NONE' }), 'JWT_ALGORITHMS')
    t.match(upper.message, /never accepted/)
    refuses(t, withSecret({ JWT_ALGORITHMS: 'HS256,NONE' }), 'JWT_ALGORITHMS')
  })
  t.test('an HS algorithm with a public key is refused', async (t) => {
    const error = refuses(t, { NODE_ENV: 'test', JWT_PUBLIC_KEY_FILE: rsa, JWT_ALGORITHMS: 'HS256' }, 'JWT_ALGORITHMS')
    t.match(error.message, /asymmetric/)
  })
  t.test('an asymmetric algorithm with JWT_SECRET is refused', async (t) => {
    const error = refuses(t, withSecret({ JWT_ALGORITHMS: 'RS256' }), 'JWT_ALGORITHMS')
    t.match(error.message, /HMAC/)
  })
  t.test('an asymmetric algorithm with the development secret is refused', async (t) => {
    refuses(t, { NODE_ENV: 'development', JWT_ALGORITHMS: 'ES256' }, 'JWT_ALGORITHMS', t.testdir())
  })
  t.test('an HS algorithm with a JWKS URL is refused', async (t) => {
    refuses(t, { NODE_ENV: 'test', JWT_JWKS_URL: 'https://idp.example/jwks', JWT_ALGORITHMS: 'HS256' }, 'JWT_ALGORITHMS')
  })
  t.test('an explicit list overrides the key family', async (t) => {
    const config = loadConfig({ NODE_ENV: 'test', JWT_PUBLIC_KEY_FILE: rsa, JWT_ALGORITHMS: 'RS256,RS512' }, dir)
    t.same(config.jwt.algorithms, ['RS256', 'RS512'])
  })
})

t.test('exactly one key source', async (t) => {
  const dir = t.testdir()
  const rsa = keyFile(dir, 'rsa.pem', publicPem(generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey))
  t.match(refuses(t, { NODE_ENV: 'test', JWT_PUBLIC_KEY_FILE: rsa, JWT_ALGORITHMS: 'ES256' }, 'JWT_ALGORITHMS').message, /ES256 cannot be verified with the key/)
  const both = refuses(t, { NODE_ENV: 'test', JWT_SECRET: TEST_SECRET, JWT_PUBLIC_KEY_FILE: rsa }, 'JWT_PUBLIC_KEY_FILE')
  t.match(both.message, /exactly one/)
  t.match(both.message, /JWT_SECRET/)
  refuses(t, { NODE_ENV: 'test', JWT_SECRET: TEST_SECRET, JWT_JWKS_URL: 'https://idp.example/jwks' }, 'JWT_JWKS_URL')
  refuses(t, { NODE_ENV: 'test', JWT_PUBLIC_KEY_FILE: rsa, JWT_JWKS_URL: 'https://idp.example/jwks' }, 'JWT_JWKS_URL')
  // An empty source is unset: the other one is used.
  t.equal(loadConfig({ NODE_ENV: 'test', JWT_SECRET: '', JWT_PUBLIC_KEY_FILE: rsa }, dir).jwt.algorithms[0], 'RS256')
})

t.test('JWT_JWKS_URL', async (t) => {
  const config = loadConfig({ NODE_ENV: 'test', JWT_JWKS_URL: 'https://idp.example/.well-known/jwks.json' }, t.testdir())
  t.equal(config.jwt.jwksUrl, 'https://idp.example/.well-known/jwks.json')
  t.equal(config.jwt.key, undefined)
  t.same(config.jwt.algorithms, ['RS256'], 'RS256 unless pinned otherwise')
  const pinned = loadConfig({ NODE_ENV: 'test', JWT_JWKS_URL: 'https://idp.example/jwks', JWT_ALGORITHMS: 'ES256' }, t.testdir())
  t.same(pinned.jwt.algorithms, ['ES256'])
})

t.test('JWT_PUBLIC_KEY_FILE picks the algorithm of the key', async (t) => {
  const dir = t.testdir()
  const cases: Array<[string, KeyObject, string]> = [
    ['rsa', generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey, 'RS256'],
    ['p256', generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey, 'ES256'],
    ['p384', generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey, 'ES384'],
    ['p521', generateKeyPairSync('ec', { namedCurve: 'P-521' }).publicKey, 'ES512'],
    ['ed25519', generateKeyPairSync('ed25519').publicKey, 'EdDSA']
  ]
  for (const [name, key, algorithm] of cases) {
    const pem = publicPem(key)
    const config = loadConfig({ NODE_ENV: 'test', JWT_PUBLIC_KEY_FILE: keyFile(dir, `${name}.pem`, pem) }, dir)
    t.same(config.jwt.algorithms, [algorithm], `${name} -> ${algorithm}`)
    t.equal(config.jwt.key, pem, 'the PEM is the verification key')
    t.equal(config.jwt.devSecret, false)
  }
})

t.test('JWT_PUBLIC_KEY_FILE problems', async (t) => {
  const dir = t.testdir({ 'not-a-key.pem': 'hello, I am not a key\n' })
  const missing = refuses(t, { NODE_ENV: 'test', JWT_PUBLIC_KEY_FILE: join(dir, 'missing.pem') }, 'JWT_PUBLIC_KEY_FILE')
  t.match(missing.message, /cannot read .*missing\.pem \(ENOENT\)/)
  const directory = refuses(t, { NODE_ENV: 'test', JWT_PUBLIC_KEY_FILE: dir }, 'JWT_PUBLIC_KEY_FILE')
  t.match(directory.message, /cannot read/)
  const notPem = refuses(t, { NODE_ENV: 'test', JWT_PUBLIC_KEY_FILE: join(dir, 'not-a-key.pem') }, 'JWT_PUBLIC_KEY_FILE')
  t.match(notPem.message, /is not a PEM public key/)
  const ed448 = keyFile(dir, 'ed448.pem', publicPem(generateKeyPairSync('ed448').publicKey))
  const unsupported = refuses(t, { NODE_ENV: 'test', JWT_PUBLIC_KEY_FILE: ed448 }, 'JWT_PUBLIC_KEY_FILE')
  t.match(unsupported.message, /unsupported key \(ed448\)/)
})

t.test('TLS files come in pairs', async (t) => {
  refuses(t, withSecret({ TLS_CERT_FILE: READABLE_CERT }), 'TLS_KEY_FILE')
  t.match(refuses(t, withSecret({ TLS_CERT_FILE: '/nonexistent/cert.pem', TLS_KEY_FILE: READABLE_KEY }), 'TLS_CERT_FILE').message, /cannot read "\/nonexistent\/cert\.pem" \(ENOENT\)/)
  refuses(t, withSecret({ TLS_KEY_FILE: READABLE_KEY }), 'TLS_CERT_FILE')
  refuses(t, withSecret({ TLS_CERT_FILE: READABLE_CERT, TLS_KEY_FILE: '' }), 'TLS_KEY_FILE')
})

// Regressions: these passed the checks at start and then stopped the process
// with a stack trace (a malformed REDIS_URL's quoting its password), or
// broke the instance while it ran.
t.test('values that would fail once the server runs are refused at start', async (t) => {
  for (const url of ['redis://user:S3cretPw@127.0.0.1:99999', 'redis://:S3cret#Pw@127.0.0.1:6390', 'redis://127.0.0.1:abc', 'redis://:S3cret%zz@127.0.0.1', 'redis://', 'redis://h:0']) {
    const error = refuses(t, withSecret({ REDIS_URL: url }), 'REDIS_URL')
    t.notMatch(error.message, /S3cret/, 'the URL is never echoed')
  }
  for (const url of ['redis://r:6379', 'rediss://user:pw@host:6380/2', 'redis://[::1]:6379', 'redis://localhost', 'redis://:p%23w@h:1']) {
    t.equal(loadConfig(withSecret({ REDIS_URL: url })).redisUrl, url, `${url} is accepted`)
  }

  const unusable = refuses(t, withSecret({ TLS_CERT_FILE: NOT_A_CERT, TLS_KEY_FILE: NOT_A_CERT }), 'TLS_CERT_FILE')
  t.match(unusable.message, /TLS_CERT_FILE and TLS_KEY_FILE are not a certificate and its private key in PEM \(.+\)/)
  const strangerKey = join(t.testdir(), 'other.key')
  writeFileSync(strangerKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }))
  refuses(t, withSecret({ TLS_CERT_FILE: READABLE_CERT, TLS_KEY_FILE: strangerKey }), 'TLS_CERT_FILE')

  refuses(t, withSecret({ HOST: 'not a host' }), 'HOST')
  for (const host of ['0.0.0.0', '::', '::1', 'fe80::1%eth0', 'gateway.internal', 'localhost']) t.equal(loadConfig(withSecret({ HOST: host })).host, host)

  // Node.js fires a timer of more than 2^31 - 1 ms after 1 ms.
  refuses(t, withSecret({ HEARTBEAT_INTERVAL_MS: '2147483648' }), 'HEARTBEAT_INTERVAL_MS')
  refuses(t, withSecret({ BUS_PROBE_INTERVAL_MS: '3000000000' }), 'BUS_PROBE_INTERVAL_MS')
  refuses(t, withSecret({ SHUTDOWN_TIMEOUT_MS: '2147478648' }), 'SHUTDOWN_TIMEOUT_MS')
  t.equal(loadConfig(withSecret({ SHUTDOWN_TIMEOUT_MS: '2147478647', HEARTBEAT_INTERVAL_MS: '2147483647' })).shutdownTimeoutMs, 2147478647)

  t.match(refuses(t, withSecret({ ALLOWED_ORIGINS: ' , ' }), 'ALLOWED_ORIGINS').message, /lists no origin/)
  refuses(t, { NODE_ENV: 'test', JWT_JWKS_URL: 'https://' }, 'JWT_JWKS_URL')
  refuses(t, { NODE_ENV: 'test', JWT_JWKS_URL: 'https://idp example/jwks' }, 'JWT_JWKS_URL')
})

t.test('messages stay on one line and name the choices', async (t) => {
  // refuses() checks the one line.
  refuses(t, withSecret({ ALLOWED_ORIGINS: 'https://a.example\nhttps://b.example' }), 'ALLOWED_ORIGINS')
  refuses(t, withSecret({ TRUST_PROXY: '10.0.0.1,bad\nentry' }), 'TRUST_PROXY')
  refuses(t, withSecret({ TLS_CERT_FILE: '/no/such\nfile', TLS_KEY_FILE: READABLE_KEY }), 'TLS_CERT_FILE')
  t.match(refuses(t, withSecret({ NODE_ENV: 'Production' }), 'NODE_ENV').message, 'must be one of development, production, test (got "Production")')
  t.match(refuses(t, withSecret({ LOG_LEVEL: 'INFO' }), 'LOG_LEVEL').message, 'must be one of fatal, error, warn, info, debug, trace, silent')
})

t.test('production rules', async (t) => {
  const prod = (env: Env): Env => ({ NODE_ENV: 'production', ...env })

  t.test('no JWT key', async (t) => {
    const dir = t.testdir()
    const error = refuses(t, prod({ TRUST_PROXY: 'true', SINGLE_INSTANCE: 'true' }), 'JWT_SECRET', dir)
    t.match(error.message, /production needs a JWT key/)
    t.notOk(existsSync(join(dir, '.dev-secret')), 'no development secret is created in production')
  })
  t.test('no TLS and no TRUST_PROXY', async (t) => {
    refuses(t, prod({ JWT_SECRET: TEST_SECRET, SINGLE_INSTANCE: 'true' }), 'TLS_CERT_FILE')
    refuses(t, prod({ JWT_SECRET: TEST_SECRET, SINGLE_INSTANCE: 'true', TRUST_PROXY: 'false' }), 'TLS_CERT_FILE')
  })
  t.test('no REDIS_URL without SINGLE_INSTANCE=true', async (t) => {
    refuses(t, prod({ JWT_SECRET: TEST_SECRET, TRUST_PROXY: 'true' }), 'REDIS_URL')
    refuses(t, prod({ JWT_SECRET: TEST_SECRET, TRUST_PROXY: 'true', SINGLE_INSTANCE: 'false' }), 'REDIS_URL')
  })
  t.test('accepted: TLS and SINGLE_INSTANCE=true', async (t) => {
    const config = loadConfig(prod({
      JWT_SECRET: TEST_SECRET,
      TLS_CERT_FILE: READABLE_CERT,
      TLS_KEY_FILE: READABLE_KEY,
      SINGLE_INSTANCE: 'true'
    }), t.testdir())
    t.equal(config.env, 'production')
    t.same(config.tls, { certFile: READABLE_CERT, keyFile: READABLE_KEY })
  })
  t.test('accepted: a TLS-terminating proxy and Redis', async (t) => {
    const config = loadConfig(prod({ JWT_SECRET: TEST_SECRET, TRUST_PROXY: '10.0.0.0/8', REDIS_URL: 'redis://redis:6379' }), t.testdir())
    t.same(config.trustProxy, ['10.0.0.0/8'])
    t.equal(config.redisUrl, 'redis://redis:6379')
    t.equal(config.tls, undefined)
  })
})

t.test('TRUST_PROXY', async (t) => {
  const trust = (value: string): GatewayConfig['trustProxy'] => loadConfig(withSecret({ TRUST_PROXY: value }), t.testdirName).trustProxy
  for (const value of ['false', 'FALSE', '0', 'no']) t.equal(trust(value), false, `${value} -> false`)
  for (const value of ['true', 'True', 'yes']) t.equal(trust(value), true, `${value} -> true`)
  t.equal(trust('1'), 1, 'a hop count')
  t.equal(trust('3'), 3, 'a hop count')
  t.same(trust('10.0.0.0/8, 192.168.1.1,::1'), ['10.0.0.0/8', '192.168.1.1', '::1'], 'addresses and CIDRs')
  t.same(trust('fd00::/8'), ['fd00::/8'], 'an IPv6 CIDR')
  t.same(trust('loopback,linklocal,uniquelocal'), ['loopback', 'linklocal', 'uniquelocal'], 'proxy-addr names')

  t.test('a bad entry is refused', async (t) => {
    const error = refuses(t, withSecret({ TRUST_PROXY: '10.0.0.1,proxy.example.com' }), 'TRUST_PROXY')
    t.match(error.message, /proxy\.example\.com/)
    refuses(t, withSecret({ TRUST_PROXY: 'maybe' }), 'TRUST_PROXY')
    refuses(t, withSecret({ TRUST_PROXY: 'Loopback' }), 'TRUST_PROXY')
  })
  t.test('an entry that is not an address or a valid CIDR is refused at load time', async (t) => {
    // Regression: these passed loadConfig and crashed buildApp (proxy-addr
    // throws a TypeError) with a stack trace instead of one line.
    refuses(t, withSecret({ TRUST_PROXY: '10.0.0.1/99' }), 'TRUST_PROXY')
    refuses(t, withSecret({ TRUST_PROXY: 'dead' }), 'TRUST_PROXY')
    refuses(t, withSecret({ TRUST_PROXY: '999.1.1.1' }), 'TRUST_PROXY')
  })
})

t.test('ALLOWED_ORIGINS', async (t) => {
  const dir = t.testdir()
  const origins = loadConfig(withSecret({ ALLOWED_ORIGINS: 'HTTPS://App.Example.COM:443,http://localhost:3000 , http://[::1]:80' }), dir).allowedOrigins
  t.same([...origins ?? []], ['https://app.example.com', 'http://localhost:3000', 'http://[::1]'])
  for (const bad of [
    'ftp://files.example.com', 'app.example.com', 'null', 'https://ok.example,javascript:alert(1)',
    'https://app.example.com/', 'https://app.example.com/evil/path', 'https://attacker@app.example.com', 'https://app%2eexample.com'
  ]) {
    const error = refuses(t, withSecret({ ALLOWED_ORIGINS: bad }), 'ALLOWED_ORIGINS')
    t.match(error.message, /is not an http\(s\) origin/)
  }
})

t.test('normaliseOrigin', async (t) => {
  t.equal(normaliseOrigin('https://app.example.com'), 'https://app.example.com')
  t.equal(normaliseOrigin('HTTPS://APP.Example.com'), 'https://app.example.com', 'scheme and host lower-cased')
  t.equal(normaliseOrigin('https://app.example.com:443'), 'https://app.example.com', 'default https port dropped')
  t.equal(normaliseOrigin('http://app.example.com:80'), 'http://app.example.com', 'default http port dropped')
  t.equal(normaliseOrigin('http://app.example.com:443'), 'http://app.example.com:443', 'a non-default port kept')
  t.equal(normaliseOrigin('https://app.example.com:8443'), 'https://app.example.com:8443')
  t.equal(normaliseOrigin('http://[::1]:3000'), 'http://[::1]:3000')
  t.equal(normaliseOrigin('null'), null, '"null" never matches')
  t.equal(normaliseOrigin('not an origin'), null)
  t.equal(normaliseOrigin(''), null)
  t.equal(normaliseOrigin('file:///etc/passwd'), null)
  t.equal(normaliseOrigin('ws://app.example.com'), null)
  t.not(normaliseOrigin('https://app.example.com'), normaliseOrigin('http://app.example.com'), 'the scheme matters')
  t.not(normaliseOrigin('https://app.example.com'), normaliseOrigin('https://app.example.com:444'), 'the port matters')
})

// Regression: matching accepted values that only contain an allowed origin.
t.test('normaliseOrigin accepts only a serialized origin', async (t) => {
  for (const lookalike of [
    'https://app.example.com/evil/path', 'https://app.example.com/', 'https://attacker@app.example.com',
    'https://user:pass@app.example.com', 'https://app%2eexample.com', 'https://app.example.com?x=1',
    'https://app.example.com#x', ' https://app.example.com', 'https://app.example.com:0443'
  ]) {
    t.equal(normaliseOrigin(lookalike), null, lookalike)
  }
})

t.test('development secret', async (t) => {
  t.test('created with mode 0600, then reused', async (t) => {
    const dir = t.testdir()
    const first = loadConfig({ NODE_ENV: 'development' }, dir)
    const path = join(dir, '.dev-secret')
    t.equal(statSync(path).mode & 0o777, 0o600, 'mode 0600')
    t.ok((first.jwt.key ?? '').length >= 32, 'at least 32 characters')
    t.equal(readFileSync(path, 'utf8'), `${first.jwt.key}\n`)
    t.equal(first.jwt.devSecret, true)
    t.same(first.jwt.algorithms, ['HS256'])
    const second = loadConfig({ NODE_ENV: 'development' }, dir)
    t.equal(second.jwt.key, first.jwt.key, 'the next load reuses the secret')
    t.equal(readFileSync(path, 'utf8'), `${first.jwt.key}\n`, 'the file is not rewritten')
  })

  t.test('NODE_ENV=test without a key uses it too', async (t) => {
    const config = loadConfig({ NODE_ENV: 'test' }, t.testdir())
    t.equal(config.jwt.devSecret, true)
  })

  t.test('DEV_SECRET_FILE is resolved against the working directory', async (t) => {
    const dir = t.testdir({ secrets: {} })
    const config = loadConfig({ DEV_SECRET_FILE: 'secrets/dev.key' }, dir)
    t.equal(config.jwt.devSecretFile, 'secrets/dev.key')
    t.equal(readFileSync(join(dir, 'secrets', 'dev.key'), 'utf8').trim(), config.jwt.key)
  })

  t.test('an existing secret is read and trimmed', async (t) => {
    const secret = 's'.repeat(40)
    const dir = t.testdir({ '.dev-secret': `  ${secret}\n\n` })
    t.equal(loadConfig({}, dir).jwt.key, secret)
  })

  t.test('a secret file too short to be a secret is replaced', async (t) => {
    // Regression: the 'wx' write hit EEXIST and the short secret was used.
    for (const content of ['', 'short\n']) {
      const dir = t.testdir({ '.dev-secret': content })
      const key = loadConfig({}, dir).jwt.key ?? ''
      t.ok(key.length >= 32, `${JSON.stringify(content)}: a real secret is used (got ${JSON.stringify(key)})`)
    }
  })

  t.test('another process creating the file first wins the race', async (t) => {
    const dir = t.testdir()
    const path = join(dir, '.dev-secret')
    const theirs = 'created-by-the-other-process-' + 'x'.repeat(20)
    let reads = 0
    const { loadOrCreateDevSecret } = await t.mockImport<typeof import('../config/dev-secret.js')>('../config/dev-secret.js', {
      'node:fs': {
        ...fs,
        readFileSync: (...args: Parameters<typeof fs.readFileSync>) => {
          if (reads++ === 0) {
            // Our read finds nothing; the other process writes right after.
            fs.writeFileSync(path, theirs + '\n', { mode: 0o600 })
            throw Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT' })
          }
          return fs.readFileSync(...args)
        }
      }
    })
    t.equal(loadOrCreateDevSecret('.dev-secret', dir), theirs, 'the secret written first is used by both')
    t.equal(readFileSync(path, 'utf8'), theirs + '\n', 'and never overwritten')
  })

  t.test('errors other than a missing file are not swallowed', async (t) => {
    const dir = t.testdir({ 'a-directory': {} })
    t.throws(() => loadConfig({ DEV_SECRET_FILE: 'a-directory' }, dir), { name: 'ConfigError', message: /^DEV_SECRET_FILE: cannot read .*\(EISDIR\)$/ }, 'reading a directory')
    t.throws(() => loadConfig({ DEV_SECRET_FILE: 'missing/dir/.dev-secret' }, dir), { name: 'ConfigError', message: /^DEV_SECRET_FILE: cannot create .*\(ENOENT\)$/ }, 'writing into a missing directory')
  })

  t.test('not used when a key is configured', async (t) => {
    const dir = t.testdir()
    const config = loadConfig(withSecret({ NODE_ENV: 'development' }), dir)
    t.equal(config.jwt.devSecret, false)
    t.equal(config.jwt.devSecretFile, undefined)
    t.notOk(existsSync(join(dir, '.dev-secret')))
  })
})

t.test('Redis topologies: at most one of REDIS_URL, REDIS_SENTINELS, REDIS_CLUSTER_NODES', async (t) => {
  t.same(loadConfig(withSecret()).redis, null, 'none: one instance, in-process bus')
  t.same(loadConfig(withSecret({ REDIS_URL: 'redis://r:6379' })).redis, { kind: 'url', url: 'redis://r:6379' })
  t.same(loadConfig(withSecret({ REDIS_SENTINELS: 's1:26379,s2.example:26380', REDIS_SENTINEL_NAME: 'main', REDIS_PASSWORD: 'pw', REDIS_TLS: 'true' })).redis, {
    kind: 'sentinel', sentinels: [{ host: 's1', port: 26379 }, { host: 's2.example', port: 26380 }], name: 'main', username: undefined, password: 'pw', tls: true
  })
  t.same(loadConfig(withSecret({ REDIS_CLUSTER_NODES: 'n1:7000,n2:7001', REDIS_USERNAME: 'gw' })).redis, {
    kind: 'cluster', nodes: [{ host: 'n1', port: 7000 }, { host: 'n2', port: 7001 }], username: 'gw', password: undefined, tls: false
  })
  refuses(t, withSecret({ REDIS_URL: 'redis://r:6379', REDIS_SENTINELS: 's:1', REDIS_SENTINEL_NAME: 'm' }), 'REDIS_SENTINELS')
  refuses(t, withSecret({ REDIS_SENTINELS: 's:1', REDIS_CLUSTER_NODES: 'n:1', REDIS_SENTINEL_NAME: 'm' }), 'REDIS_CLUSTER_NODES')
  refuses(t, withSecret({ REDIS_SENTINELS: 's:1' }), 'REDIS_SENTINEL_NAME')
  refuses(t, withSecret({ REDIS_SENTINEL_NAME: 'm' }), 'REDIS_SENTINELS')
  refuses(t, withSecret({ REDIS_CLUSTER_NODES: 'n1' }), 'REDIS_CLUSTER_NODES')
  refuses(t, withSecret({ REDIS_CLUSTER_NODES: 'n1:70000' }), 'REDIS_CLUSTER_NODES')
  const secret = refuses(t, withSecret({ REDIS_PASSWORD: '' + 'x', REDIS_TLS: 'maybe' }), 'REDIS_TLS')
  t.notMatch(secret.message, /x"/, 'the password is never echoed')
  const production = { NODE_ENV: 'production', JWT_SECRET: TEST_SECRET, TRUST_PROXY: 'true' }
  t.ok(loadConfig({ ...production, REDIS_SENTINELS: 's:1', REDIS_SENTINEL_NAME: 'm' }, t.testdirName).redis, 'Sentinel satisfies the production rule')
  t.ok(loadConfig({ ...production, REDIS_CLUSTER_NODES: 'n:1' }, t.testdirName).redis, 'so does a Cluster')
})
