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

// The upgrade itself.
export const IpLimitError = createError('WS_IP_LIMIT', 'too many connections from this address', 429)
export const NotWebSocketError = createError('WS_UPGRADE_REQUIRED', 'use a WebSocket upgrade on this path', 426)
export const ClientGoneError = createError('WS_CLIENT_GONE', 'client closed the connection during the handshake', 400)
