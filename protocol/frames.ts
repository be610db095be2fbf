import Type, { type Static } from 'typebox'
import { POSITION_PATTERN } from './position.js'

/**
 * The gateway's WebSocket frames (README "Protocol"), defined once as
 * TypeBox schemas with their static types: the server validates and builds
 * them, the client SDK reads them (types only, so it ships without typebox).
 */

/** Longest accepted token in an `auth` message; real JWTs are far shorter. */
const MAX_TOKEN_LENGTH = 8192
const Id = Type.String({ minLength: 1, maxLength: 128 })
// A safe integer: a larger one would not be echoed as sent (JSON numbers are doubles here).
const PingId = Type.Union([Id, Type.Integer({ minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER })])

export const SeveritySchema = Type.Union([Type.Literal('info'), Type.Literal('warning'), Type.Literal('critical')])
export type Severity = Static<typeof SeveritySchema>

// Client -> server.

export const AuthMessageSchema = Type.Object({
  type: Type.Literal('auth'),
  token: Type.String({ minLength: 1, maxLength: MAX_TOKEN_LENGTH })
}, { additionalProperties: false })

export const PingMessageSchema = Type.Object({
  type: Type.Literal('ping'),
  id: Type.Optional(PingId)
}, { additionalProperties: false })

export const AckMessageSchema = Type.Object({
  type: Type.Literal('ack'),
  alertId: Id
}, { additionalProperties: false })

/** Every message a client may send; anything else is rejected. */
export const ClientFrameSchema = Type.Union([AuthMessageSchema, PingMessageSchema, AckMessageSchema])
export type ClientFrame = Static<typeof ClientFrameSchema>

/** The `type` of every client frame, read off the schema. */
export const CLIENT_FRAME_TYPES: ReadonlySet<string> = new Set(ClientFrameSchema.anyOf.map((frame) => frame.properties.type.const))

// Server -> client.

/** A stream position (see position.ts): opaque to clients. */
export const PositionSchema = Type.String({ pattern: POSITION_PATTERN })

/** Where the client stands in both streams it follows. */
export const PositionsSchema = Type.Object({ all: PositionSchema, user: PositionSchema })
export type Positions = Static<typeof PositionsSchema>

export const StreamNameSchema = Type.Union([Type.Literal('all'), Type.Literal('user')])

/** The first frame of every session: the limits the client must respect. */
export const WelcomeSchema = Type.Object({
  type: Type.Literal('welcome'),
  connectionId: Type.String(),
  userId: Type.String(),
  heartbeatMs: Type.Integer(),
  reauthMs: Type.Integer(),
  maxMessageBytes: Type.Integer(),
  /** Head of both streams (absent when history is off). */
  pos: Type.Optional(PositionsSchema)
})
export type Welcome = Static<typeof WelcomeSchema>

/** An alert pushed by the gateway. `ts` is epoch milliseconds. */
export const AlertSchema = Type.Object({
  type: Type.Literal('alert'),
  id: Type.String(),
  ts: Type.Integer(),
  severity: SeveritySchema,
  title: Type.String(),
  body: Type.Optional(Type.String()),
  data: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  /** The stream it belongs to and its position there (absent when history is off). */
  stream: Type.Optional(StreamNameSchema),
  pos: Type.Optional(PositionSchema),
  /** True when replayed from history on resume. */
  replay: Type.Optional(Type.Literal(true))
})
export type Alert = Static<typeof AlertSchema>

/** After the replayed alerts of a resume: whether nothing is missing, and where the client stands. */
export const ResumedSchema = Type.Object({
  type: Type.Literal('resumed'),
  recovered: Type.Boolean(),
  replayed: Type.Integer({ minimum: 0 }),
  pos: PositionsSchema
})
export type Resumed = Static<typeof ResumedSchema>

/** Alerts of `streams` may be missing between the client's position and `pos`. */
export const GapSchema = Type.Object({
  type: Type.Literal('gap'),
  streams: Type.Array(StreamNameSchema),
  pos: PositionsSchema
})
export type Gap = Static<typeof GapSchema>

export const ReauthSchema = Type.Object({
  type: Type.Literal('reauth'),
  deadlineMs: Type.Integer()
})
export type Reauth = Static<typeof ReauthSchema>

export const PongSchema = Type.Object({
  type: Type.Literal('pong'),
  id: Type.Optional(PingId)
})
export type Pong = Static<typeof PongSchema>

/** Codes of `error` frames (README "Error codes"). */
export const ErrorCode = {
  INVALID_JSON: 'invalid_json',
  INVALID_MESSAGE: 'invalid_message',
  UNKNOWN_TYPE: 'unknown_type',
  AUTH_FAILED: 'auth_failed'
} as const
export type ErrorCodeValue = typeof ErrorCode[keyof typeof ErrorCode]

export const ServerErrorSchema = Type.Object({
  type: Type.Literal('error'),
  code: Type.String(),
  message: Type.String()
})
export type ServerError = Static<typeof ServerErrorSchema>

export const ServerFrameSchema = Type.Union([WelcomeSchema, AlertSchema, ResumedSchema, GapSchema, ReauthSchema, PongSchema, ServerErrorSchema])
export type ServerFrame = Static<typeof ServerFrameSchema>
