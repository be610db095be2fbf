import Type, { type Static } from 'typebox'
import { SeveritySchema } from '../../protocol/frames.js'

/** The HTTP contract of POST /alerts: its body and its 202 answer. */

const UserIdSchema = Type.String({ minLength: 1, maxLength: 256 })

/** Most users one alert may name (`target.userIds`). */
export const MAX_USER_IDS = 1000

export const AlertTargetSchema = Type.Union([
  Type.Object({ all: Type.Literal(true) }, { additionalProperties: false }),
  Type.Object({ userId: UserIdSchema }, { additionalProperties: false }),
  Type.Object({
    userIds: Type.Array(UserIdSchema, { minItems: 1, maxItems: MAX_USER_IDS, uniqueItems: true })
  }, { additionalProperties: false })
])

/** Deepest accepted `data` of POST /alerts: `data` is level 1, each object or array in it one more. */
export const MAX_DATA_DEPTH = 16

/**
 * True when `value`, at `level`, holds no object or array deeper than
 * MAX_DATA_DEPTH. Stops descending there, so a body nested thousands of levels
 * cannot overflow the stack here (it did in JSON.stringify).
 */
function withinDataDepth (value: unknown, level: number): boolean {
  if (value === null || typeof value !== 'object') return true
  if (level > MAX_DATA_DEPTH) return false
  for (const child of Object.values(value)) {
    if (!withinDataDepth(child, level + 1)) return false
  }
  return true
}

// A Record's key schema is not checked on values: propertyNames bounds keys.
// The depth is a refinement, not a schema of nested levels: a union per level
// would be inlined by Compile and grow exponentially.
const AlertDataSchema = Type.Refine(
  Type.Record(Type.String(), Type.Unknown(), { maxProperties: 50, propertyNames: { maxLength: 128 } }),
  (data) => withinDataDepth(data, 1),
  () => `must not be nested more than ${MAX_DATA_DEPTH} levels deep`
)

/** Body of POST /alerts. Text fields are sanitised before validation. */
export const PublishAlertSchema = Type.Object({
  target: AlertTargetSchema,
  severity: SeveritySchema,
  title: Type.String({ minLength: 1, maxLength: 200 }),
  body: Type.Optional(Type.String({ maxLength: 4000 })),
  data: Type.Optional(AlertDataSchema)
}, { additionalProperties: false })
export type PublishAlert = Static<typeof PublishAlertSchema>

export const PublishResultSchema = Type.Object({
  id: Type.String(),
  delivered: Type.Integer({ minimum: 0 }),
  stream: Type.Optional(Type.Union([Type.Literal('all'), Type.Literal('user')])),
  pos: Type.Optional(Type.String())
})
export type PublishResult = Static<typeof PublishResultSchema>

/** `Idempotency-Key`: 1 to 255 visible ASCII characters. */
export const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/
