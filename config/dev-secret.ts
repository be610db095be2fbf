import { randomBytes } from 'node:crypto'
import { chmodSync, readFileSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'

/**
 * Development only: reads the HS256 secret kept in `file`, or creates one
 * (mode 0600) so that tokens minted by `npm run token` keep working across
 * restarts. The file is git-ignored.
 */
export function loadOrCreateDevSecret (file: string, cwd: string): string {
  const path = resolve(cwd, file)
  try {
    const existing = readFileSync(path, 'utf8').trim()
    if (existing.length >= 32) return existing
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const secret = randomBytes(48).toString('base64url')
  // 'wx' never overwrites a file another process created meanwhile.
  try {
    writeFileSync(path, secret + '\n', { mode: 0o600, flag: 'wx' })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return readFileSync(path, 'utf8').trim()
    throw err
  }
  chmodSync(path, 0o600)
  return secret
}
