/**
 * The `sub` claim of a JWT, read without verifying the signature, or null
 * when the token is not a JWT with a string `sub`. The client uses it only
 * to find where it stands for that user before the first `welcome` (a page
 * reload knows no user yet): the gateway verifies the token, and resumes
 * the streams of the user it verified, whatever the client guessed.
 */
export function tokenSubject (token: string): string | null {
  const parts = token.split('.')
  if (parts.length !== 3) return null
  try {
    const binary = atob(parts[1].replace(/-/g, '+').replace(/_/g, '/'))
    const json = new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)))
    const sub: unknown = JSON.parse(json)?.sub
    return typeof sub === 'string' && sub !== '' ? sub : null
  } catch {
    return null
  }
}
