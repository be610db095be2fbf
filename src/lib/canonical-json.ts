/**
 * JSON text of a parsed JSON value with every object's keys in sorted order:
 * the same text for the same value, whatever order its keys came in.
 * Properties holding `undefined` are left out, as JSON.stringify does.
 * Recursive: give it values of bounded depth (a validated body).
 */
export function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value === null || typeof value !== 'object') return JSON.stringify(value)
  const fields = value as Record<string, unknown>
  const parts: string[] = []
  for (const key of Object.keys(fields).sort()) {
    if (fields[key] !== undefined) parts.push(`${JSON.stringify(key)}:${canonicalJson(fields[key])}`)
  }
  return `{${parts.join(',')}}`
}
