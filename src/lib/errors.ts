import createError from '@fastify/error'

// HTTP errors of the public contract (README "HTTP routes"), created once.

// 401: no usable token.
export const TokenMissingError = createError('WS_TOKEN_MISSING', 'missing token', 401)
export const TokenInvalidError = createError('WS_TOKEN_INVALID', 'invalid or expired token', 401)

// 403: a valid token, refused.
export const TokenRevokedError = createError('WS_TOKEN_REVOKED', 'token revoked', 403)
export const OriginRefusedError = createError('WS_ORIGIN_REFUSED', 'origin not allowed', 403)
export const ScopeMissingError = createError('WS_SCOPE_MISSING', 'token lacks scope %s', 403)
export const InsecureTransportError = createError('WS_INSECURE_TRANSPORT', 'https required', 403)

// 503: the instance cannot take it now.
export const ShuttingDownError = createError('WS_SHUTTING_DOWN', 'server shutting down', 503)
export const BusUnavailableError = createError('WS_BUS_UNAVAILABLE', 'message bus unavailable', 503)
export const OverloadedError = createError('WS_OVERLOADED', 'too many pending handshakes', 503)

// 400 and 422: a request the gateway cannot take as sent.
export const BadPositionError = createError('WS_BAD_POSITION', '%s is not a stream position', 400)
export const BadIdempotencyKeyError = createError('WS_BAD_IDEMPOTENCY_KEY', 'Idempotency-Key must be 1 to 255 visible ASCII characters', 400)
export const IdempotencyConflictError = createError('WS_IDEMPOTENCY_CONFLICT', 'Idempotency-Key was used with another body', 422)

// The upgrade itself.
export const IpLimitError = createError('WS_IP_LIMIT', 'too many connections from this address', 429)
export const NotWebSocketError = createError('WS_UPGRADE_REQUIRED', 'use a WebSocket upgrade on this path', 426)
export const ClientGoneError = createError('WS_CLIENT_GONE', 'client closed the connection during the handshake', 400)
