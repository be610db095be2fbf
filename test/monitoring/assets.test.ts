import t from 'tap'
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parse } from 'yaml'
import { MetricName } from '../../src/lib/metric-names.js'

const RULES = fileURLToPath(new URL('../../config/prometheus/alerts.yml', import.meta.url))
const DASHBOARD = fileURLToPath(new URL('../../config/grafana/alert-gateway-dashboard.json', import.meta.url))
const CONTRACT = new Set<string>(Object.values(MetricName))

/** Gateway metric names (ws_*) used by an expression. */
function gatewayMetrics (expr: string): string[] {
  return [...expr.matchAll(/\b(ws_[a-z_]+?)(?:_bucket|_sum|_count)?\b/g)].map((m) => m[1])
}

interface Rule { alert: string, expr: string, for?: string, labels?: Record<string, string>, annotations?: Record<string, string> }

t.test('the alert rules file is valid and covers the required alerts', async (t) => {
  const doc = parse(readFileSync(RULES, 'utf8')) as { groups: Array<{ name: string, rules: Rule[] }> }
  t.ok(Array.isArray(doc.groups) && doc.groups.length > 0, 'has groups')
  const rules = doc.groups.flatMap((g) => g.rules)
  const names = rules.map((r) => r.alert)
  for (const required of ['GatewayConnectionSpike', 'GatewayHighRejectionRate', 'GatewayBusDisconnected', 'GatewayInstanceNotReady']) {
    t.ok(names.includes(required), `has ${required}`)
  }
  for (const rule of rules) {
    t.type(rule.expr, 'string', `${rule.alert} has an expression`)
    t.ok(rule.labels?.severity, `${rule.alert} has a severity`)
    t.ok(rule.annotations?.summary, `${rule.alert} has a summary`)
    for (const metric of gatewayMetrics(rule.expr)) t.ok(CONTRACT.has(metric), `${rule.alert} uses contract metric ${metric}`)
  }
  t.match(rules.find((r) => r.alert === 'GatewayConnectionSpike')?.expr, /ws_connection_spike/)
  t.match(rules.find((r) => r.alert === 'GatewayBusDisconnected')?.expr, /ws_bus_connected/)
})

const promtool = spawnSync('promtool', ['--version'], { encoding: 'utf8' }).error === undefined

t.test('promtool accepts the rules', { skip: promtool ? false : 'promtool not installed (Debian package prometheus)' }, async (t) => {
  const checked = spawnSync('promtool', ['check', 'rules', RULES], { encoding: 'utf8' })
  t.equal(checked.status, 0, checked.stdout + checked.stderr)
})

t.test('the Grafana dashboard uses only contract and process metrics', async (t) => {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Array<{ title: string, targets: Array<{ expr: string }> }> }
  const used = new Set(dashboard.panels.flatMap((p) => p.targets.flatMap((q) => gatewayMetrics(q.expr))))
  for (const metric of used) t.ok(CONTRACT.has(metric), `${metric} is a contract metric`)
  for (const metric of CONTRACT) t.ok(used.has(metric), `${metric} has a panel`)
})
