import t from 'tap'
import { createVerifier } from 'fast-jwt'
import type { JwtConfig } from '../../../config/index.js'
import { mintToken } from '../../../src/dev/dev-tokens.js'
import { TEST_SECRET } from '../../helpers/tokens.js'

const hs: JwtConfig = { key: TEST_SECRET, algorithms: ['HS256'], clockToleranceSec: 1, devSecret: true }

t.test('mints a verifiable token with sub, iat and a one-hour exp by default', async (t) => {
  const token = mintToken(hs, 'alice')
  const claims = createVerifier({ key: TEST_SECRET, algorithms: ['HS256'] })(token)
  t.equal(claims.sub, 'alice')
  t.equal(claims.exp - claims.iat, 3600)
  t.notOk('scope' in claims, 'no scope unless asked')
  t.notOk('iss' in claims)
  t.notOk('aud' in claims)
})

t.test('scope, ttl in milliseconds or as a span, issuer and audience', async (t) => {
  const config: JwtConfig = { ...hs, algorithms: ['HS512'], issuer: 'https://idp.example', audience: 'alerts' }
  const verify = createVerifier({ key: TEST_SECRET, algorithms: ['HS512'], allowedIss: 'https://idp.example', allowedAud: 'alerts' })
  const service = verify(mintToken(config, 'svc', { scope: 'alerts:publish', ttl: 60_000 }))
  t.equal(service.scope, 'alerts:publish')
  t.equal(service.exp - service.iat, 60)
  const spanned = verify(mintToken(config, 'bob', { ttl: '15m' }))
  t.equal(spanned.exp - spanned.iat, 900)
})

t.test('refuses configurations without an HMAC secret', async (t) => {
  t.throws(() => mintToken({ jwksUrl: 'https://idp.example/jwks', algorithms: ['RS256'], clockToleranceSec: 1, devSecret: false }, 'x'),
    /only with JWT_SECRET or the development secret/)
  t.throws(() => mintToken({ key: '-----BEGIN PUBLIC KEY-----', algorithms: ['RS256'], clockToleranceSec: 1, devSecret: false }, 'x'),
    /only with JWT_SECRET or the development secret/)
})
