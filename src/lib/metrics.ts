import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import {
  CONNECTION_RESULTS, MetricName, REJECT_REASONS,
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
  connectionSpike: Gauge
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
  // Zero-initialise every label so dashboards and rate() see each series.
  for (const result of CONNECTION_RESULTS) connectionsTotal.inc({ result }, 0)
  for (const reason of REJECT_REASONS) messagesRejected.inc({ reason }, 0)
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
    connection (result) { connectionsTotal.inc({ result }) },
    rejected (reason) { messagesRejected.inc({ reason }) }
  }
}
