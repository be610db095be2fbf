/** Claims the gateway relies on; `sub` and `exp` are required. */
export interface TokenClaims {
  sub: string
  exp: number
  iat?: number
  nbf?: number
  jti?: string
  iss?: string
  aud?: string | string[]
  scope?: string | string[]
}

/** The scope a service token needs to publish alerts. */
export const PUBLISH_SCOPE = 'alerts:publish'

export function hasScope (claims: TokenClaims, scope: string): boolean {
  const granted = claims.scope
  if (Array.isArray(granted)) return granted.includes(scope)
  return typeof granted === 'string' && granted.split(' ').includes(scope)
}

/**
 * Whether a logout at `before` (epoch s; null: none) revokes the token: it
 * revokes every token issued up to that second, and any token without `iat`.
 */
export function isRevoked (claims: TokenClaims, before: number | null): boolean {
  if (before === null) return false
  return typeof claims.iat !== 'number' || claims.iat <= before
}
