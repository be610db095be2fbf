import { MAX_DATA_DEPTH } from '../delivery/publish-schema.js'

// C0 and C1 control characters (DEL included), and the bidi embedding,
// override and isolate characters used to disguise text (CVE-2021-42574).
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const UNSAFE_SINGLE_LINE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const UNSAFE_MULTI_LINE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g

/** Sanitises a one-line text field: no control or bidi characters, NFC. */
export function sanitiseLine (text: string): string {
  return text.replace(UNSAFE_SINGLE_LINE, '').normalize('NFC')
}

/** Sanitises a multi-line text field: as sanitiseLine, but keeps \n and \t. */
export function sanitiseText (text: string): string {
  return text.replace(UNSAFE_MULTI_LINE, '').normalize('NFC')
}

/**
 * Sanitises every string key and value of `value`, an object or array at
 * `level` of an alert's `data`, into a new object or array. Containers deeper
 * than MAX_DATA_DEPTH are returned as they are: validation refuses them, and
 * the recursion stays bounded however deep the body is nested.
 */
function sanitiseData (value: unknown, level: number): unknown {
  if (typeof value === 'string') return sanitiseLine(value)
  if (value === null || typeof value !== 'object' || level > MAX_DATA_DEPTH) return value
  if (Array.isArray(value)) return value.map((item) => sanitiseData(item, level + 1))
  const clean: Record<string, unknown> = {}
  for (const [key, item] of Object.entries(value)) {
    // Defined, not assigned: a key that sanitises to "__proto__" must stay a
    // plain key, not replace the object's prototype.
    Object.defineProperty(clean, sanitiseLine(key), { value: sanitiseData(item, level + 1), enumerable: true, writable: true, configurable: true })
  }
  return clean
}

/**
 * Sanitises the text of a POST /alerts body in place, before validation, so
 * the schema's length bounds apply to what is sent.
 */
export function sanitiseAlertBody (body: unknown): void {
  if (body === null || typeof body !== 'object') return
  const fields = body as Record<string, unknown>
  if (typeof fields.title === 'string') fields.title = sanitiseLine(fields.title)
  if (typeof fields.body === 'string') fields.body = sanitiseText(fields.body)
  if (fields.data !== undefined) fields.data = sanitiseData(fields.data, 1)
}
