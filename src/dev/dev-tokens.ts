import { createSigner } from 'fast-jwt'
import type { JwtConfig } from '../../config/index.js'

export interface MintOptions {
  /** Space-separated scopes, e.g. `alerts:publish`. */
  scope?: string
  /** Lifetime: milliseconds or a span such as `1h`, `15m`. Default 1h. */
  ttl?: string | number
}

/**
 * Mints a token with the configured HMAC secret, for development and tests
 * (`npm run token`). Asymmetric setups mint tokens at their identity provider.
 */
export function mintToken (jwt: JwtConfig, sub: string, options: MintOptions = {}): string {
  const algorithm = jwt.algorithms[0]
  if (jwt.key === undefined || !algorithm.startsWith('HS')) {
    throw new Error('tokens can be minted here only with JWT_SECRET or the development secret')
  }
  const ttl = options.ttl ?? '1h'
  const sign = createSigner({
    key: jwt.key,
    algorithm: algorithm as 'HS256',
    expiresIn: ttl,
    iss: jwt.issuer,
    aud: jwt.audience
  })
  const payload: Record<string, unknown> = { sub }
  if (options.scope !== undefined) payload.scope = options.scope
  return sign(payload)
}
