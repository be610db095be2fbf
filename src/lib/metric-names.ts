/** Prometheus metric names and label values of the public contract. */
export const MetricName = {
  CONNECTIONS_ACTIVE: 'ws_connections_active',
  CONNECTIONS_TOTAL: 'ws_connections_total',
  MESSAGES_RECEIVED: 'ws_messages_received_total',
  MESSAGES_SENT: 'ws_messages_sent_total',
  MESSAGES_REJECTED: 'ws_messages_rejected_total',
  CONNECTION_DURATION: 'ws_connection_duration_seconds',
  BUS_CONNECTED: 'ws_bus_connected',
  CONNECTION_SPIKE: 'ws_connection_spike',
  ALERTS_PUBLISHED: 'ws_alerts_published_total',
  IDEMPOTENT_REPLAYS: 'ws_publish_idempotent_replays_total',
  RESUME: 'ws_resume_total',
  HISTORY_REPLAYED: 'ws_history_replayed_total',
  BUS_CATCHUP: 'ws_bus_catchup_total',
  BUS_PROBE_FAILURES: 'ws_bus_probe_failures_total',
  HANDSHAKES_WAITING: 'ws_handshakes_waiting'
} as const

/** `target` label of ws_alerts_published_total. */
export const PUBLISH_TARGETS = ['all', 'user', 'users'] as const
/** `result` label of ws_resume_total. */
export const RESUME_RESULTS = ['recovered', 'gap'] as const
/** `result` label of ws_bus_catchup_total. */
export const CATCHUP_RESULTS = ['caught_up', 'gap'] as const

/** `result` label of ws_connections_total. */
export type ConnectionResult =
  | 'accepted'
  | 'unauthorized'
  | 'forbidden_origin'
  | 'revoked'
  | 'rate_limited_user'
  | 'rate_limited_ip'
  | 'shutting_down'
  | 'overloaded'

export const CONNECTION_RESULTS: readonly ConnectionResult[] = [
  'accepted', 'unauthorized', 'forbidden_origin', 'revoked',
  'rate_limited_user', 'rate_limited_ip', 'shutting_down', 'overloaded'
]

/** `reason` label of ws_messages_rejected_total. */
export type RejectReason =
  | 'invalid_json'
  | 'invalid_message'
  | 'unknown_type'
  | 'binary'
  | 'too_big'
  | 'rate_limited'
  | 'auth_failed'

export const REJECT_REASONS: readonly RejectReason[] = [
  'invalid_json', 'invalid_message', 'unknown_type', 'binary', 'too_big', 'rate_limited', 'auth_failed'
]
