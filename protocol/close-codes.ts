/** WebSocket close codes of the public contract (README "Close codes"). */
export const CloseCode = {
  NORMAL: 1000,
  SHUTTING_DOWN: 1001,
  PROTOCOL_ERROR: 1002,
  BINARY_FRAME: 1003,
  ABNORMAL: 1006,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  /** Reserved by the contract: reconnect at once, with positions. Not sent by this build. */
  SERVICE_RESTART: 1012,
  OVERLOADED: 1013,
  TOKEN_EXPIRED: 4401,
  LOGGED_OUT: 4403,
  REPLACED: 4409
} as const

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
