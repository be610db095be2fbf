import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { freePort, sleep, startRedis } from './processes.mjs'

const run = promisify(execFile)

/** One command through redis-cli against 127.0.0.1:port; resolves to its output. */
export async function redisCli (port, ...args) {
  const { stdout } = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 10000 })
  return stdout
}

/**
 * `INFO commandstats` of one node as { command: { calls, usec } }
 * (`cmdstat_evalsha:calls=3,usec=120,...`).
 */
export async function commandStats (port) {
  const stats = {}
  for (const line of (await redisCli(port, 'INFO', 'commandstats')).split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line.trim())
    if (m !== null) stats[m[1]] = { calls: Number(m[2]), usec: Number(m[3]) }
  }
  return stats
}

/** after - before of two commandStats() answers, commands with no calls left out. */
export function commandStatsDelta (before, after) {
  const delta = {}
  for (const [name, a] of Object.entries(after)) {
    const calls = a.calls - (before[name]?.calls ?? 0)
    if (calls > 0) delta[name] = { calls, usec: a.usec - (before[name]?.usec ?? 0) }
  }
  return delta
}

/**
 * A private Redis Cluster: `masters` masters with `replicas` replicas each,
 * every node a redis-server on free ports (client port and cluster bus port
 * picked separately, `--cluster-port`), its nodes.conf in a temp dir that
 * `stop()` removes. Created with `redis-cli --cluster create`; resolves once
 * every node reports `cluster_state:ok` and every replica's link is up.
 */
export async function startRedisCluster ({ masters = 3, replicas = 1, log = () => {} } = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gw-bench-cluster-'))
  // The nodes themselves are killed at exit with every process the bench started.
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  const nodes = []
  try {
    for (let i = 0; i < masters * (1 + replicas); i++) {
      const busPort = await freePort()
      nodes.push(await startRedis({
        args: ['--cluster-enabled', 'yes', '--cluster-port', String(busPort), '--dir', dir,
          '--cluster-config-file', `nodes-${i}-${busPort}.conf`, '--cluster-node-timeout', '5000']
      }))
    }
    const addresses = nodes.map((n) => `127.0.0.1:${n.port}`)
    log(`creating a cluster of ${masters} masters and ${masters * replicas} replicas: ${addresses.join(' ')}`)
    await run('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-replicas', String(replicas), '--cluster-yes'], { timeout: 60000 })
    const deadline = Date.now() + 60000
    for (;;) {
      const infos = await Promise.all(nodes.map((n) => redisCli(n.port, 'CLUSTER', 'INFO').catch(() => '')))
      const repl = await Promise.all(nodes.map((n) => redisCli(n.port, 'INFO', 'replication').catch(() => '')))
      const ok = infos.every((i) => i.includes('cluster_state:ok')) &&
        repl.every((r) => r.includes('role:master') || r.includes('master_link_status:up'))
      if (ok) break
      if (Date.now() > deadline) throw new Error('the cluster did not reach cluster_state:ok within 60 s')
      await sleep(200)
    }
    // Who is a master, and which slots each one holds.
    const roles = await Promise.all(nodes.map((n) => redisCli(n.port, 'INFO', 'replication')))
    for (const [i, node] of nodes.entries()) node.role = roles[i].includes('role:master') ? 'master' : 'replica'
    const table = await redisCli(nodes[0].port, 'CLUSTER', 'NODES')
    for (const line of table.trim().split('\n')) {
      const fields = line.split(' ')
      const port = Number(fields[1].split('@')[0].split(':')[1])
      const node = nodes.find((n) => n.port === port)
      if (node !== undefined) node.slots = fields.slice(8).join(' ')
    }
  } catch (err) {
    await Promise.allSettled(nodes.map((n) => n.stop()))
    rmSync(dir, { recursive: true, force: true })
    throw err
  }
  return {
    nodes,
    masters: nodes.filter((n) => n.role === 'master'),
    /** Seed list for REDIS_CLUSTER_NODES. */
    seeds: nodes.map((n) => `127.0.0.1:${n.port}`).join(','),
    stop: async () => {
      await Promise.allSettled(nodes.map((n) => n.stop()))
      rmSync(dir, { recursive: true, force: true })
    }
  }
}
