import Type, { type Static } from 'typebox'
import { Compile } from 'typebox/compile'

/** Longest accepted token in an `auth` message; real JWTs are far shorter. */
const MAX_TOKEN_LENGTH = 8192
const Id = Type.String({ minLength: 1, maxLength: 128 })

export const AuthMessageSchema = Type.Object({
  type: Type.Literal('auth'),
  token: Type.String({ minLength: 1, maxLength: MAX_TOKEN_LENGTH })
}, { additionalProperties: false })

export const PingMessageSchema = Type.Object({
  type: Type.Literal('ping'),
  id: Type.Optional(Type.Union([Id, Type.Integer()]))
}, { additionalProperties: false })

export const AckMessageSchema = Type.Object({
  type: Type.Literal('ack'),
  alertId: Id
}, { additionalProperties: false })

/** Every message a client may send; anything else is rejected. */
export const ClientMessageSchema = Type.Union([AuthMessageSchema, PingMessageSchema, AckMessageSchema])
export type ClientMessage = Static<typeof ClientMessageSchema>

/** Compiled once at module load, never per message. */
export const clientMessageValidator = Compile(ClientMessageSchema)

export const CLIENT_MESSAGE_TYPES = new Set(['auth', 'ping', 'ack'])

export const SeveritySchema = Type.Union([Type.Literal('info'), Type.Literal('warning'), Type.Literal('critical')])

export const AlertTargetSchema = Type.Union([
  Type.Object({ all: Type.Literal(true) }, { additionalProperties: false }),
  Type.Object({ userId: Type.String({ minLength: 1, maxLength: 256 }) }, { additionalProperties: false })
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
  delivered: Type.Integer({ minimum: 0 })
})

/** Frames as written to clients, defined once with the client (client/protocol.ts). */
export type { Alert as AlertFrame, Welcome as WelcomeFrame } from '../client/protocol.js'

/** Codes of `error` replies. */
export const MessageErrorCode = {
  INVALID_JSON: 'invalid_json',
  INVALID_MESSAGE: 'invalid_message',
  UNKNOWN_TYPE: 'unknown_type',
  AUTH_FAILED: 'auth_failed'
} as const
