import { createHmac, createSign, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto'

export const TEST_SECRET = 'test-secret-that-is-long-enough-for-hs256!'

function b64url (value: object | Buffer): string {
  const buf = Buffer.isBuffer(value) ? value : Buffer.from(JSON.stringify(value))
  return buf.toString('base64url')
}

export interface Claims {
  sub?: string
  exp?: number
  iat?: number
  nbf?: number
  scope?: string
  [claim: string]: unknown
}

/**
 * Signs a JWT by hand with node:crypto (independent of the library the
 * gateway uses), so tests can craft any header: alg none, HS with an RSA
 * public key as the secret, and so on.
 */
export function signJwt (claims: Claims, opts: { alg?: string, key?: string | Buffer | KeyObject, header?: object } = {}): string {
  const alg = opts.alg ?? 'HS256'
  const header = { alg, typ: 'JWT', ...opts.header }
  const input = `${b64url(header)}.${b64url(claims)}`
  if (alg === 'none') return `${input}.`
  if (alg.startsWith('HS')) {
    const key = opts.key ?? TEST_SECRET
    const hmac = createHmac(`sha${alg.slice(2)}`, key as string | Buffer)
    return `${input}.${hmac.update(input).digest('base64url')}`
  }
  if (alg.startsWith('RS')) {
    const signer = createSign(`RSA-SHA${alg.slice(2)}`)
    return `${input}.${signer.update(input).sign(opts.key as KeyObject).toString('base64url')}`
  }
  throw new Error(`unsupported alg ${alg}`)
}

export const nowSec = (): number => Math.floor(Date.now() / 1000)

/** A valid user token for `sub`, expiring in an hour unless overridden; signed with `key` (the test secret by default). */
export function userToken (sub: string, claims: Claims = {}, key?: string): string {
  return signJwt({ sub, iat: nowSec(), exp: nowSec() + 3600, ...claims }, { key })
}

export function serviceToken (sub = 'svc', claims: Claims = {}, key?: string): string {
  return userToken(sub, { scope: 'alerts:publish', ...claims }, key)
}

export function rsaKeyPair (): { publicPem: string, privateKey: KeyObject } {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  return { publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(), privateKey }
}

/** A user id no other test uses: the connect-attempt limit is per user. */
export const newUser = (prefix = 'user'): string => `${prefix}-${randomUUID()}`
