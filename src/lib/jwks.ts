import { createPublicKey, type JsonWebKey } from 'node:crypto'

/** Shortest time between two fetches caused by unknown key ids. */
const MIN_REFETCH_MS = 30_000
const FETCH_TIMEOUT_MS = 5_000

type Jwk = JsonWebKey & { kid?: string, use?: string }

export interface JwksKeysOptions {
  /** How long fetched keys are used before the set is fetched again. */
  ttlMs?: number
  /** Told once per key id about keys that cannot be imported (and are skipped). */
  log?: { warn: (context: object, message: string) => void }
}

/**
 * Public keys of a JWKS endpoint by `kid`, as PEM. Keys are fetched on first
 * use, kept for `ttlMs`, and fetched again early when a token names an
 * unknown `kid` (key rotation), at most once per MIN_REFETCH_MS.
 *
 * Not get-jwks (11.0.3, which @fastify/jwt's README shows): it fetches and
 * caches per (alg, kid), so every unknown kid costs a fetch, unthrottled;
 * it returns `use: "enc"` keys; one null entry in `keys` throws for every kid
 * listed after it; its 5 s `timeout` is a node-fetch option that the global
 * fetch ignores; and jwk-to-pem cannot read Ed25519 (OKP) keys. The last
 * three cannot be fixed from outside it. test/src/lib/jwks.test.ts fails on
 * each of them with get-jwks.
 */
export class JwksKeys {
  readonly #url: string
  readonly #ttlMs: number
  readonly #log: JwksKeysOptions['log']
  /** Key ids already reported as unusable, so a refetch does not repeat it. */
  readonly #reported = new Set<string>()
  #keys = new Map<string, string>()
  #fetchedAt = 0
  #inflight: Promise<void> | null = null

  constructor (url: string, options: JwksKeysOptions = {}) {
    this.#url = url
    this.#ttlMs = options.ttlMs ?? 600_000
    this.#log = options.log
  }

  /** The key as PEM; null (reported once per kid) when it cannot be imported. */
  #import (kid: string, jwk: Jwk): string | null {
    try {
      return createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString()
    } catch (err) {
      if (!this.#reported.has(kid)) {
        this.#reported.add(kid)
        this.#log?.warn({ kid, err: (err as Error).message }, 'JWKS key skipped: it cannot be imported')
      }
      return null
    }
  }

  async #refresh (): Promise<void> {
    this.#inflight ??= (async () => {
      try {
        const res = await fetch(this.#url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) })
        if (!res.ok) throw new Error(`JWKS endpoint answered ${res.status}`)
        const body = await res.json() as { keys?: Array<Jwk | null> }
        const keys = new Map<string, string>()
        // One unusable key (another key type, a malformed entry) must not
        // take the others down with it: it is skipped.
        for (const jwk of body.keys ?? []) {
          if (typeof jwk?.kid !== 'string' || (jwk.use !== undefined && jwk.use !== 'sig')) continue
          const pem = this.#import(jwk.kid, jwk)
          if (pem !== null) keys.set(jwk.kid, pem)
        }
        this.#keys = keys
      } finally {
        // A failed fetch also waits MIN_REFETCH_MS: a down endpoint is not hammered.
        this.#fetchedAt = Date.now()
        this.#inflight = null
      }
    })()
    return this.#inflight
  }

  /** The PEM key for `kid`; throws when the endpoint does not know it. */
  async get (kid: unknown): Promise<string> {
    if (typeof kid !== 'string') throw new Error('token has no kid')
    const age = Date.now() - this.#fetchedAt
    if (age > this.#ttlMs || (!this.#keys.has(kid) && age > MIN_REFETCH_MS)) await this.#refresh()
    const key = this.#keys.get(kid)
    if (key === undefined) throw new Error(`unknown kid ${kid}`)
    return key
  }
}
