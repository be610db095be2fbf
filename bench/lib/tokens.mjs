import { createHmac } from 'node:crypto'

/** The HS256 secret shared by every server under test and the clients. */
export const BENCH_SECRET = 'bench-secret-that-is-long-enough-for-hs256-0123456789'

const HEADER = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url')

/** Signs an HS256 JWT with node:crypto (no JWT library on the client side). */
export function signToken (claims, secret = BENCH_SECRET) {
  const input = `${HEADER}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
}

/** A user token for `sub`, valid for `ttlSec`. */
export function userToken (sub, secret = BENCH_SECRET, ttlSec = 4 * 3600) {
  const iat = Math.floor(Date.now() / 1000)
  return signToken({ sub, iat, exp: iat + ttlSec }, secret)
}

/** A service token allowed to publish alerts. */
export function serviceToken (secret = BENCH_SECRET, ttlSec = 4 * 3600) {
  const iat = Math.floor(Date.now() / 1000)
  return signToken({ sub: 'bench-publisher', scope: 'alerts:publish', iat, exp: iat + ttlSec }, secret)
}
