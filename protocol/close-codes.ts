import { CloseCode } from '../client/protocol.js'

/** WebSocket close codes of the public contract, defined once (client/protocol.ts). */
export { CloseCode }

/** The codes this server sends itself (1002, 1007 come from the ws layer). */
export type CloseCodeValue =
  | typeof CloseCode.SHUTTING_DOWN
  | typeof CloseCode.BINARY_FRAME
  | typeof CloseCode.POLICY_VIOLATION
  | typeof CloseCode.MESSAGE_TOO_BIG
  | typeof CloseCode.INTERNAL_ERROR
  | typeof CloseCode.OVERLOADED
  | typeof CloseCode.TOKEN_EXPIRED
  | typeof CloseCode.LOGGED_OUT
  | typeof CloseCode.REPLACED

/** Short close reasons sent with each code (at most 123 bytes by RFC 6455). */
export const CloseReason: Record<CloseCodeValue, string> = {
  1001: 'server shutting down',
  1003: 'binary frames are not accepted',
  1008: 'policy violation',
  1009: 'message too big',
  1011: 'internal error',
  1013: 'overloaded',
  4401: 'token expired or re-authentication failed',
  4403: 'logged out',
  4409: 'replaced by a newer connection'
}
