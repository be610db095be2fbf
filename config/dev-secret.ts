import { randomBytes } from 'node:crypto'
import { chmodSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'

const MISSING = Symbol('missing')
const TOO_SHORT = Symbol('too short')

/** The secret in `path`, or why there is none worth using. */
function readExisting (path: string): string | typeof MISSING | typeof TOO_SHORT {
  let content: string
  try {
    content = readFileSync(path, 'utf8').trim()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return MISSING
    throw new Error(`cannot read ${path} (${(err as NodeJS.ErrnoException).code})`)
  }
  // Never sign with a truncated or emptied secret: such a file is replaced.
  return Buffer.byteLength(content) >= 32 ? content : TOO_SHORT
}

/**
 * Development only: reads the HS256 secret kept in `file`, or creates one
 * (mode 0600) so that tokens minted by `npm run token` keep working across
 * restarts. The file is git-ignored.
 */
export function loadOrCreateDevSecret (file: string, cwd: string): string {
  const path = resolve(cwd, file)
  const existing = readExisting(path)
  if (typeof existing === 'string') return existing
  const secret = randomBytes(48).toString('base64url')
  // 'wx' never overwrites a file another process created meanwhile; a
  // useless (too short) file is replaced.
  try {
    if (existing === TOO_SHORT) rmSync(path)
    writeFileSync(path, secret + '\n', { mode: 0o600, flag: 'wx' })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return readExisting(path) as string // the other writer's
    throw new Error(`cannot create ${path} (${(err as NodeJS.ErrnoException).code})`)
  }
  chmodSync(path, 0o600)
  return secret
}
