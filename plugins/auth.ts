import fp from 'fastify-plugin'
import fastifyCookie from '@fastify/cookie'
import fastifyJwt, { type FastifyJWTOptions } from '@fastify/jwt'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { normaliseOrigin, type JwtConfig } from '../config/index.js'
import { JwksKeys } from '../src/lib/jwks.js'
import {
  BusUnavailableError, OriginRefusedError, ScopeMissingError,
  TokenInvalidError, TokenMissingError, TokenRevokedError
} from '../src/lib/errors.js'
import { hasScope, isRevoked, PUBLISH_SCOPE, type TokenClaims } from '../src/lib/token-claims.js'

export type { TokenClaims } from '../src/lib/token-claims.js'

export const ACCESS_TOKEN_COOKIE = 'access_token'
const MAX_SUB_LENGTH = 256
/**
 * Largest accepted lead of `iat` over this clock. Logout revokes tokens
 * issued up to its second, so a token dated further ahead could outlive
 * every logout.
 */
export const MAX_IAT_SKEW_SEC = 30

export interface AuthOptions {
  jwt: JwtConfig
  /** Normalised allowed origins; null allows any (including none). */
  allowedOrigins: Set<string> | null
  /** Warn at registration when no origin list guards the browser-style token sources (production). */
  warnOpenOrigins?: boolean
}

/** The token of an `Authorization: Bearer` header: the only source on REST routes. */
export function bearerToken (request: FastifyRequest): string | undefined {
  const header = request.headers.authorization
  if (typeof header !== 'string') return undefined
  const match = /^Bearer[ \t]+(\S+)\s*$/i.exec(header)
  return match === null ? undefined : match[1]
}

/**
 * Finds the token of a `/ws` upgrade: `?token=`, then `Authorization:
 * Bearer`, then the cookie. A browser can only use the first and the last,
 * which is why no REST route accepts them (a cross-site form could send them).
 */
export function extractToken (request: FastifyRequest): string | undefined {
  const query = request.query as Record<string, unknown> | undefined
  const fromQuery = query?.token
  if (typeof fromQuery === 'string' && fromQuery !== '') return fromQuery
  const fromHeader = bearerToken(request)
  if (fromHeader !== undefined) return fromHeader
  const cookie = request.cookies?.[ACCESS_TOKEN_COOKIE]
  if (typeof cookie === 'string' && cookie !== '') return cookie
  return undefined
}

/**
 * Decorates `fastify.verifyToken` (verifies a JWT string with @fastify/jwt
 * against the configured secret, PEM public key or JWKS endpoint: pinned algorithms,
 * `sub` and `exp` required, `iss`/`aud` when configured),
 * `fastify.authenticateUser` and `fastify.authenticateService` (onRequest
 * hooks answering 401/403 before any upgrade) and `fastify.checkOrigin`.
 */
async function authPlugin (fastify: FastifyInstance, opts: AuthOptions) {
  const { jwt, allowedOrigins } = opts
  // Revocations are shared by the instances (memory or Redis).
  const { revocations } = fastify.cluster
  if (jwt.key === undefined && jwt.jwksUrl === undefined) throw new Error('auth: option jwt needs a key or a jwksUrl')

  const verifyOptions = {
    algorithms: jwt.algorithms as never,
    allowedIss: jwt.issuer,
    allowedAud: jwt.audience,
    // fast-jwt checks iss/aud only when present: configured means required.
    requiredClaims: ['sub', 'exp', ...(jwt.issuer !== undefined ? ['iss'] : []), ...(jwt.audience !== undefined ? ['aud'] : [])],
    clockTolerance: jwt.clockToleranceSec * 1000
  }
  if (opts.warnOpenOrigins === true && allowedOrigins === null) {
    fastify.log.warn('ALLOWED_ORIGINS is unset: any web page can open /ws with a token the browser holds (?token= or the access_token cookie); set it to your frontend origins')
  }
  await fastify.register(fastifyCookie)
  let secret: FastifyJWTOptions['secret']
  let sign: FastifyJWTOptions['sign']
  if (jwt.key === undefined) {
    const keys = new JwksKeys(jwt.jwksUrl as string, { log: fastify.log })
    // The key published for the token's `kid`. fastify.jwt.verify passes a
    // key function to fast-jwt unchanged: fast-jwt calls it with the decoded
    // token and awaits it, so verify() returns a Promise. (Its callback form
    // would hand that Promise over as the result, and request.jwtVerify would
    // call the function with the request first: neither is used.)
    const jwksKey = async ({ header }: { header: { kid?: unknown } }): Promise<string> => keys.get(header.kid)
    secret = { public: jwksKey as never }
  } else if (jwt.algorithms[0].startsWith('HS')) {
    secret = jwt.key
    sign = { algorithm: jwt.algorithms[0] as never }
  } else {
    // A PEM public key verifies only: @fastify/jwt wants it as { public }.
    secret = { public: jwt.key }
  }
  // Two verifiers of the same keys. Publishers send the same service token
  // with every alert: theirs caches verified tokens (a hit skips decoding
  // and the claim checks; measured: -40 us per POST /alerts with HS256).
  // User tokens come once per connection, so the cache would only cost the
  // SHA-256 that keys it on every upgrade, and an entry per connection.
  await fastify.register(fastifyJwt, { namespace: 'user', secret, sign, verify: verifyOptions })
  await fastify.register(fastifyJwt, { namespace: 'publisher', secret, verify: { ...verifyOptions, cache: 1000, cacheTTL: 600000 } })

  // A configured clock tolerance above the default widens it (JWT_CLOCK_TOLERANCE_SECONDS).
  const iatSkewSec = Math.max(MAX_IAT_SKEW_SEC, jwt.clockToleranceSec)

  async function verifyToken (token: string, verifier: 'user' | 'publisher' = 'user'): Promise<TokenClaims> {
    let claims: TokenClaims
    try {
      // No per-call options: with them @fastify/jwt builds a new verifier,
      // and so a new empty cache, for each call.
      claims = await fastify.jwt[verifier].verify<TokenClaims>(token)
    } catch (err) {
      fastify.log.debug({ reason: (err as { code?: string }).code }, 'token refused')
      throw new TokenInvalidError()
    }
    if (typeof claims.sub !== 'string' || claims.sub === '' || claims.sub.length > MAX_SUB_LENGTH || typeof claims.exp !== 'number') {
      throw new TokenInvalidError()
    }
    if (typeof claims.iat === 'number' && claims.iat > Date.now() / 1000 + iatSkewSec) {
      fastify.log.debug({ userId: claims.sub }, 'token refused: issued in the future')
      throw new TokenInvalidError()
    }
    return claims
  }

  async function checkRevoked (claims: TokenClaims): Promise<void> {
    let before: number | null
    try {
      before = await revocations.revokedBefore(claims.sub)
    } catch (err) {
      // Fail closed: a token whose revocation cannot be read (Redis down or
      // stalled) is never accepted, whatever the later steps would do.
      fastify.log.warn({ err: (err as Error).message, userId: claims.sub }, 'token refused: revocation could not be checked')
      throw new BusUnavailableError()
    }
    if (isRevoked(claims, before)) throw new TokenRevokedError()
  }

  async function verifyFrom (request: FastifyRequest, token: string | undefined, verifier?: 'user' | 'publisher'): Promise<TokenClaims> {
    if (token === undefined) throw new TokenMissingError()
    const claims = await verifyToken(token, verifier)
    request.user = claims
    return claims
  }

  async function verifyRequest (request: FastifyRequest): Promise<TokenClaims> {
    return verifyFrom(request, extractToken(request))
  }

  /** REST: the Bearer header only, verified and not revoked. */
  async function authenticate (request: FastifyRequest, verifier?: 'user' | 'publisher'): Promise<TokenClaims> {
    const claims = await verifyFrom(request, bearerToken(request), verifier)
    await checkRevoked(claims)
    return claims
  }

  fastify.decorate('verifyToken', verifyToken)
  fastify.decorate('verifyRequest', verifyRequest)
  fastify.decorate('checkRevoked', checkRevoked)

  fastify.decorate('checkOrigin', function checkOrigin (request: FastifyRequest): void {
    if (allowedOrigins === null) return
    const origin = request.headers.origin
    // Non-browser clients send no Origin: they are not refused by this rule.
    if (origin === undefined) return
    const normalised = normaliseOrigin(origin)
    if (normalised === null || !allowedOrigins.has(normalised)) throw new OriginRefusedError()
  })

  fastify.decorate('authenticateUser', async function authenticateUser (request: FastifyRequest) {
    await authenticate(request)
  })

  fastify.decorate('authenticateService', async function authenticateService (request: FastifyRequest) {
    const claims = await authenticate(request, 'publisher')
    if (!hasScope(claims, PUBLISH_SCOPE)) throw new ScopeMissingError(PUBLISH_SCOPE)
  })
}

export default fp(authPlugin, { name: 'auth', fastify: '5.x', dependencies: ['cluster'] })

declare module 'fastify' {
  interface FastifyInstance {
    verifyToken: (token: string) => Promise<TokenClaims>
    /** The upgrade's token (query, Bearer or cookie) verified (401 otherwise) and set as `request.user`; revocation not checked. */
    verifyRequest: (request: FastifyRequest) => Promise<TokenClaims>
    checkRevoked: (claims: TokenClaims) => Promise<void>
    checkOrigin: (request: FastifyRequest) => void
    authenticateUser: (request: FastifyRequest) => Promise<void>
    authenticateService: (request: FastifyRequest) => Promise<void>
  }
}

declare module '@fastify/jwt' {
  interface FastifyJWT {
    namespaces: 'user' | 'publisher'
    payload: Partial<TokenClaims> & Record<string, unknown>
    user: TokenClaims
  }
}
