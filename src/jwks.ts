import { createPublicKey, type JsonWebKey } from 'node:crypto'

/** Shortest time between two fetches caused by unknown key ids. */
const MIN_REFETCH_MS = 30_000
const FETCH_TIMEOUT_MS = 5_000

/**
 * Public keys of a JWKS endpoint by `kid`, as PEM. Keys are fetched on first
 * use, kept for `ttlMs`, and fetched again early when a token names an
 * unknown `kid` (key rotation), at most once per MIN_REFETCH_MS.
 */
export class JwksKeys {
  readonly #url: string
  readonly #ttlMs: number
  #keys = new Map<string, string>()
  #fetchedAt = 0
  #inflight: Promise<void> | null = null

  constructor (url: string, ttlMs = 600_000) {
    this.#url = url
    this.#ttlMs = ttlMs
  }

  async #refresh (): Promise<void> {
    this.#inflight ??= (async () => {
      try {
        const res = await fetch(this.#url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) })
        if (!res.ok) throw new Error(`JWKS endpoint answered ${res.status}`)
        const body = await res.json() as { keys?: Array<JsonWebKey & { kid?: string, use?: string }> }
        const keys = new Map<string, string>()
        for (const jwk of body.keys ?? []) {
          if (typeof jwk.kid !== 'string' || (jwk.use !== undefined && jwk.use !== 'sig')) continue
          keys.set(jwk.kid, createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString())
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
