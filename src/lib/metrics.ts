import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import {
  CATCHUP_RESULTS, CONNECTION_RESULTS, MetricName, PUBLISH_TARGETS, REJECT_REASONS, RESUME_RESULTS,
  type ConnectionResult, type RejectReason
} from './metric-names.js'

export interface GatewayMetrics {
  registry: Registry
  connectionsActive: Gauge
  connectionsTotal: Counter<'result'>
  messagesReceived: Counter
  messagesSent: Counter
  messagesRejected: Counter<'reason'>
  connectionDuration: Histogram
  busConnected: Gauge
  /** Upgrades waiting for their turn (HANDSHAKE_CONCURRENCY). */
  handshakesWaiting: Gauge
  connectionSpike: Gauge
  alertsPublished: Counter<'target'>
  idempotentReplays: Counter
  resumes: Counter<'result'>
  historyReplayed: Counter
  busCatchups: Counter<'result'>
  busProbeFailures: Counter
  connection (result: ConnectionResult): void
  rejected (reason: RejectReason): void
}

/** The gateway's Prometheus metrics, in a registry of their own. */
export function createMetrics (defaultMetrics: boolean): GatewayMetrics {
  // One registry per app, so several instances can live in one process.
  const registry = new Registry()
  if (defaultMetrics) collectDefaultMetrics({ register: registry })
  const registers = [registry]
  const connectionsTotal = new Counter({
    name: MetricName.CONNECTIONS_TOTAL,
    help: 'WebSocket upgrade attempts by result',
    labelNames: ['result'] as const,
    registers
  })
  const messagesRejected = new Counter({
    name: MetricName.MESSAGES_REJECTED,
    help: 'Client messages rejected, by reason',
    labelNames: ['reason'] as const,
    registers
  })
  const alertsPublished = new Counter({ name: MetricName.ALERTS_PUBLISHED, help: 'Alerts accepted by POST /alerts, by target', labelNames: ['target'] as const, registers })
  const resumes = new Counter({ name: MetricName.RESUME, help: 'Sessions resumed from history, by result', labelNames: ['result'] as const, registers })
  const busCatchups = new Counter({ name: MetricName.BUS_CATCHUP, help: 'Streams caught up from history after a bus interruption, by result', labelNames: ['result'] as const, registers })
  // Zero-initialise every label so dashboards and rate() see each series.
  for (const result of CONNECTION_RESULTS) connectionsTotal.inc({ result }, 0)
  for (const reason of REJECT_REASONS) messagesRejected.inc({ reason }, 0)
  for (const target of PUBLISH_TARGETS) alertsPublished.inc({ target }, 0)
  for (const result of RESUME_RESULTS) resumes.inc({ result }, 0)
  for (const result of CATCHUP_RESULTS) busCatchups.inc({ result }, 0)
  return {
    registry,
    connectionsActive: new Gauge({ name: MetricName.CONNECTIONS_ACTIVE, help: 'Open WebSocket sessions on this instance', registers }),
    connectionsTotal,
    messagesReceived: new Counter({ name: MetricName.MESSAGES_RECEIVED, help: 'Client messages received', registers }),
    messagesSent: new Counter({ name: MetricName.MESSAGES_SENT, help: 'Messages written to client sockets', registers }),
    messagesRejected,
    connectionDuration: new Histogram({
      name: MetricName.CONNECTION_DURATION,
      help: 'Lifetime of closed WebSocket sessions',
      buckets: [1, 10, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600],
      registers
    }),
    busConnected: new Gauge({ name: MetricName.BUS_CONNECTED, help: '1 when the message bus reaches the other instances', registers }),
    connectionSpike: new Gauge({ name: MetricName.CONNECTION_SPIKE, help: '1 while the connect rate is far above its recent baseline', registers }),
    alertsPublished,
    idempotentReplays: new Counter({ name: MetricName.IDEMPOTENT_REPLAYS, help: 'POST /alerts answered from an earlier request with the same Idempotency-Key', registers }),
    resumes,
    historyReplayed: new Counter({ name: MetricName.HISTORY_REPLAYED, help: 'Alerts replayed from history to resuming sessions', registers }),
    busCatchups,
    busProbeFailures: new Counter({ name: MetricName.BUS_PROBE_FAILURES, help: 'Bus probes not received back in time', registers }),
    handshakesWaiting: new Gauge({ name: MetricName.HANDSHAKES_WAITING, help: 'Upgrades waiting for their turn to do their work (HANDSHAKE_CONCURRENCY at a time)', registers }),
    connection (result) { connectionsTotal.inc({ result }) },
    rejected (reason) { messagesRejected.inc({ reason }) }
  }
}
