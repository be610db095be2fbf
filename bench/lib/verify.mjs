import { createVerifier } from 'fast-jwt'

/**
 * The token check of the reference servers: an HS256 JWT signed with
 * `secret` that carries `sub` and `exp`. The returned function gives the
 * claims or throws.
 */
export function createTokenVerifier (secret) {
  return createVerifier({ key: secret, algorithms: ['HS256'], requiredClaims: ['sub', 'exp'] })
}
