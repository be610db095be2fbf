import Type, { type Static } from 'typebox'

/** Longest delay a Node.js timer takes: longer ones fire after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1

const Millis = (defaultValue: number, minimum = 1, maximum = MAX_TIMER_MS) =>
  Type.Integer({ default: defaultValue, minimum, maximum })

/**
 * Every environment variable the gateway reads, with its default. The names
 * and defaults are part of the public contract (see README "Configuration").
 */
export const EnvSchema = Type.Object({
  // A host name, an IPv4 address or an IPv6 one (a zone id included).
  HOST: Type.String({ default: '127.0.0.1', pattern: '^[A-Za-z0-9._:%-]+$' }),
  PORT: Type.Integer({ default: 3000, minimum: 0, maximum: 65535 }),
  NODE_ENV: Type.Union([
    Type.Literal('development'),
    Type.Literal('production'),
    Type.Literal('test')
  ], { default: 'development' }),
  LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
    { default: 'info' }
  ),

  // At least 32 bytes (not characters): checked where the key is built.
  JWT_SECRET: Type.Optional(Type.String({ minLength: 1 })),
  JWT_PUBLIC_KEY_FILE: Type.Optional(Type.String({ minLength: 1 })),
  JWT_JWKS_URL: Type.Optional(Type.String({ pattern: '^https?://' })),
  JWT_ALGORITHMS: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9]+(,[A-Za-z0-9]+)*$' })),
  JWT_ISSUER: Type.Optional(Type.String({ minLength: 1 })),
  JWT_AUDIENCE: Type.Optional(Type.String({ minLength: 1 })),
  JWT_CLOCK_TOLERANCE_SECONDS: Type.Integer({ default: 1, minimum: 0, maximum: 300 }),
  DEV_SECRET_FILE: Type.String({ default: '.dev-secret', minLength: 1 }),
  REVOCATION_TTL_SECONDS: Type.Integer({ default: 86400, minimum: 60 }),

  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://' })),
  REDIS_SENTINELS: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9._-]+:[0-9]{1,5}(,[A-Za-z0-9._-]+:[0-9]{1,5})*$' })),
  REDIS_SENTINEL_NAME: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  REDIS_CLUSTER_NODES: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9._-]+:[0-9]{1,5}(,[A-Za-z0-9._-]+:[0-9]{1,5})*$' })),
  REDIS_USERNAME: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_PASSWORD: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_TLS: Type.Boolean({ default: false }),
  SINGLE_INSTANCE: Type.Boolean({ default: false }),

  ALLOWED_ORIGINS: Type.Optional(Type.String({ minLength: 1 })),
  TLS_CERT_FILE: Type.Optional(Type.String({ minLength: 1 })),
  TLS_KEY_FILE: Type.Optional(Type.String({ minLength: 1 })),
  TRUST_PROXY: Type.String({ default: 'false' }),

  WS_MAX_MESSAGE_BYTES: Type.Integer({ default: 10240, minimum: 64, maximum: 16 * 1024 * 1024 }),
  HEARTBEAT_INTERVAL_MS: Millis(30000, 50),
  REAUTH_INTERVAL_MS: Millis(900000, 50),
  REAUTH_GRACE_MS: Millis(30000, 10),
  MAX_CONNECTIONS_PER_USER: Type.Integer({ default: 1, minimum: 1, maximum: 100 }),
  MAX_CONNECT_ATTEMPTS_PER_MINUTE: Type.Integer({ default: 5, minimum: 1 }),
  MAX_CONNECTIONS_PER_IP: Type.Integer({ default: 100, minimum: 1 }),
  // The process timer is this plus 5 s (src/server.ts).
  SHUTDOWN_TIMEOUT_MS: Millis(10000, 10, MAX_TIMER_MS - 5000),

  MAX_MALFORMED_PER_MINUTE: Type.Integer({ default: 10, minimum: 1 }),
  MESSAGE_RATE_PER_SECOND: Type.Integer({ default: 20, minimum: 1 }),
  MESSAGE_BURST: Type.Integer({ default: 40, minimum: 1 }),
  SEND_BUFFER_MAX_BYTES: Type.Integer({ default: 1024 * 1024, minimum: 1024 }),
  HANDSHAKE_TIMEOUT_MS: Millis(10000, 100),
  MAX_PENDING_HANDSHAKES: Type.Integer({ default: 1000, minimum: 1 }),
  HANDSHAKE_CONCURRENCY: Type.Integer({ default: 16, minimum: 1 }),
  IP_SLOT_TTL_MS: Millis(90000, 1000),
  REST_RATE_LIMIT_PER_MINUTE: Type.Integer({ default: 600, minimum: 1 }),
  PUBLISH_RATE_LIMIT_PER_MINUTE: Type.Integer({ default: 60000, minimum: 1 }),
  BUS_PROBE_INTERVAL_MS: Millis(2000, 100),
  HISTORY_RETENTION_MS: Millis(600000, 1000),
  HISTORY_MAX_ENTRIES: Type.Integer({ default: 300, minimum: 0, maximum: 10000 }),
  IDEMPOTENCY_WINDOW_MS: Millis(600000, 1000),
  SPIKE_WINDOW_MS: Millis(10000, 100),
  SPIKE_BASELINE_WINDOWS: Type.Integer({ default: 30, minimum: 2 }),
  SPIKE_FACTOR: Type.Number({ default: 5, minimum: 1 }),
  SPIKE_MIN_CONNECTS: Type.Integer({ default: 100, minimum: 1 })
})

export type Env = Static<typeof EnvSchema>
