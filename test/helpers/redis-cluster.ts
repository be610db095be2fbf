import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import calculateSlot from 'cluster-key-slot'
import { Redis } from 'ioredis'
import { freePort } from './free-port.js'
import { AdminConnections, killRedis, spawnRedis, type RedisProcess } from './redis-process.js'
import { waitUntil } from './timeout.js'

const run = promisify(execFile)

interface Teardown {
  teardown: (fn: () => unknown) => void
}

/** One redis-server of the cluster, as started here. */
type Node = RedisProcess

const MASTERS = 3
const REPLICAS_PER_MASTER = 1
const NODE_TIMEOUT_MS = 2000
/** Keys moved per MIGRATE while a slot moves. */
const MIGRATE_BATCH = 100

/** Steps of a slot move at which a test can act (see RedisCluster.moveSlot). */
export interface MoveSlotHooks {
  migrating?: () => Promise<void>
  keysMoved?: () => Promise<void>
}

/** The hash slot of `key` (its `{hash tag}` when it has one), as the cluster computes it. */
export function slotOf (key: string): number {
  return calculateSlot(key)
}

/** `INFO commandstats` of one node: calls per command (`cmdstat_<name>:calls=N,...`). */
export type CommandStats = Record<string, number>

/** A line of CLUSTER NODES: `<id> <ip:port@bus> <flags> <master id> ... <slots...>`. */
interface NodeLine {
  id: string
  port: number
  flags: string[]
  masterId: string
  slots: string[]
}

function parseNodes (text: string): NodeLine[] {
  return text.trim().split('\n').map((line) => {
    const fields = line.trim().split(' ')
    return {
      id: fields[0],
      port: Number(fields[1].split('@')[0].split(':').at(-1)),
      flags: fields[2].split(','),
      masterId: fields[3],
      slots: fields.slice(8)
    }
  })
}

/**
 * A private Redis Cluster for one suite: 3 masters and a replica each, every
 * node a redis-server on free loopback ports (its client port and its
 * cluster bus port picked separately: port + 10000 may be taken or out of
 * range) in a temporary directory of its own, removed at teardown. Never the
 * shared server on 6379. Resolves once every node reports `cluster_state:ok`
 * and every replica is in sync, so a failover can start at once.
 */
export class RedisCluster {
  readonly #dir: string
  /** Every node started, by client port, whatever its role now. */
  readonly #nodes = new Map<number, Node>()
  readonly #admins = new AdminConnections()

  private constructor (dir: string) {
    this.#dir = dir
  }

  /** Environment for a gateway on this cluster (every node a seed). */
  get env (): { REDIS_CLUSTER_NODES: string } {
    return { REDIS_CLUSTER_NODES: this.ports.map((port) => `127.0.0.1:${port}`).join(',') }
  }

  /** Client ports of every node started. */
  get ports (): number[] {
    return [...this.#nodes.keys()]
  }

  /** Ports of the nodes still running. */
  get alivePorts (): number[] {
    return [...this.#nodes.values()].filter((n) => n.child.exitCode === null && n.child.signalCode === null).map((n) => n.port)
  }

  static async start (t: Teardown): Promise<RedisCluster> {
    const cluster = new RedisCluster(await mkdtemp(join(tmpdir(), 'gw-cluster-')))
    t.teardown(async () => {
      await cluster.stop()
      await rm(cluster.#dir, { recursive: true, force: true })
    })
    const count = MASTERS * (1 + REPLICAS_PER_MASTER)
    const ports = new Set<number>()
    while (ports.size < count * 2) ports.add(await freePort())
    const [clientPorts, busPorts] = [[...ports].slice(0, count), [...ports].slice(count)]
    await Promise.all(clientPorts.map((port, i) => cluster.#startNode(port, busPorts[i])))
    await run('redis-cli', [
      '--cluster', 'create', ...clientPorts.map((port) => `127.0.0.1:${port}`),
      '--cluster-replicas', String(REPLICAS_PER_MASTER), '--cluster-yes'
    ], { timeout: 30_000 })
    await cluster.waitHealthy()
    return cluster
  }

  async #startNode (port: number, busPort: number): Promise<void> {
    const dir = join(this.#dir, `node-${port}`)
    await mkdir(dir)
    this.#nodes.set(port, await spawnRedis(port, [
      '--port', String(port), '--cluster-port', String(busPort), '--bind', '127.0.0.1', '--protected-mode', 'no',
      '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', String(NODE_TIMEOUT_MS),
      '--save', '', '--appendonly', 'no', '--dir', dir, '--loglevel', 'warning'
    ], dir))
  }

  /**
   * Every running node reports `cluster_state:ok`, all agree on who owns
   * every slot, and every replica's link to its master is up.
   */
  async waitHealthy (timeoutMs = 20_000): Promise<void> {
    await waitUntil(async () => {
      const ports = this.alivePorts
      const states = await Promise.all(ports.map((port) => this.#cli(port, 'CLUSTER', 'INFO').catch(() => '')))
      if (!states.every((s) => s.includes('cluster_state:ok'))) return false
      const views = await Promise.all(ports.map(async (port) => this.#slotView(await this.#cli(port, 'CLUSTER', 'NODES'))))
      if (!views.every((v) => v === views[0])) return false
      const replication = await Promise.all(ports.map((port) => this.#cli(port, 'INFO', 'replication').catch(() => '')))
      return replication.every((r) => r.includes('role:master') || r.includes('master_link_status:up'))
    }, timeoutMs, 'cluster_state:ok on every node, one slot map, replicas in sync')
  }

  /** Who owns what, as one node sees it (masters not failed, their slots), comparable across nodes. */
  #slotView (text: string): string {
    return parseNodes(text)
      .filter((n) => n.flags.includes('master') && !n.flags.includes('fail') && n.slots.length > 0)
      .map((n) => `${n.port}:${n.slots.filter((s) => !s.startsWith('[')).join(' ')}`)
      .sort().join('|')
  }

  /** CLUSTER NODES as a running node sees it. */
  async #table (): Promise<NodeLine[]> {
    return parseNodes(await this.#cli(this.alivePorts[0], 'CLUSTER', 'NODES'))
  }

  /** Ports of the masters owning slots now. */
  async masters (): Promise<number[]> {
    return (await this.#table()).filter((n) => n.flags.includes('master') && !n.flags.includes('fail') && n.slots.length > 0).map((n) => n.port).sort((x, y) => x - y)
  }

  /** The port of the master owning `slot` (0-16383). */
  async masterOfSlot (slot: number): Promise<number> {
    for (const node of await this.#table()) {
      if (!node.flags.includes('master') || node.flags.includes('fail')) continue
      for (const range of node.slots) {
        if (range.startsWith('[')) continue
        const [from, to = from] = range.split('-').map(Number)
        if (slot >= from && slot <= to) return node.port
      }
    }
    throw new Error(`no master owns slot ${slot}`)
  }

  /** The port of the master owning the slot of `key` (its hash tag, if any). */
  async nodeForKey (key: string): Promise<number> {
    return this.masterOfSlot(calculateSlot(key))
  }

  /** The replica port of master `port`. */
  async replicaOf (port: number): Promise<number> {
    const table = await this.#table()
    const master = table.find((n) => n.port === port)
    const replica = table.find((n) => n.masterId === master?.id && !n.flags.includes('fail'))
    if (replica === undefined) throw new Error(`master ${port} has no replica`)
    return replica.port
  }

  /**
   * Moves `slot` with its keys to master `toPort`, as `redis-cli --cluster
   * reshard` does: IMPORTING on the target, MIGRATING on the source, MIGRATE
   * the keys in batches, then SETSLOT NODE on the target, the source and the
   * other masters. Resolves once every node sees the new owner.
   * `during.migrating` runs once the slot is MIGRATING/IMPORTING (its keys
   * still on the source), `during.keysMoved` once its keys are on the target
   * but the source still owns it: a test publishes meanwhile.
   */
  async moveSlot (slot: number, toPort: number, during: MoveSlotHooks = {}): Promise<void> {
    const fromPort = await this.masterOfSlot(slot)
    if (fromPort === toPort) throw new Error(`slot ${slot} is already on ${toPort}`)
    const [from, to] = await Promise.all([this.admin(fromPort), this.admin(toPort)])
    try {
      const [fromId, toId] = await Promise.all([from.call('CLUSTER', 'MYID'), to.call('CLUSTER', 'MYID')]) as [string, string]
      await to.call('CLUSTER', 'SETSLOT', slot, 'IMPORTING', fromId)
      await from.call('CLUSTER', 'SETSLOT', slot, 'MIGRATING', toId)
      await during.migrating?.()
      for (;;) {
        const keys = await from.call('CLUSTER', 'GETKEYSINSLOT', slot, MIGRATE_BATCH) as string[]
        if (keys.length === 0) break
        await from.call('MIGRATE', '127.0.0.1', toPort, '', 0, 5000, 'REPLACE', 'KEYS', ...keys)
      }
      await during.keysMoved?.()
      await to.call('CLUSTER', 'SETSLOT', slot, 'NODE', toId)
      await from.call('CLUSTER', 'SETSLOT', slot, 'NODE', toId)
      for (const port of await this.masters()) {
        if (port === fromPort || port === toPort) continue
        const other = await this.admin(port)
        try {
          await other.call('CLUSTER', 'SETSLOT', slot, 'NODE', toId)
        } finally {
          this.#close(other)
        }
      }
    } finally {
      this.#close(from)
      this.#close(to)
    }
    await waitUntil(async () => {
      const owners = await Promise.all(this.alivePorts.map(async (port) => {
        const node = parseNodes(await this.#cli(port, 'CLUSTER', 'NODES')).find((n) => n.slots.some((r) => {
          if (r.startsWith('[')) return false
          const [a, b = a] = r.split('-').map(Number)
          return slot >= a && slot <= b
        }))
        return node?.port
      }))
      return owners.every((p) => p === toPort)
    }, 10_000, `every node to see slot ${slot} on ${toPort}`)
  }

  /**
   * SIGKILLs master `port` and waits until its replica is promoted and the
   * cluster is healthy again; resolves with the new master's port.
   */
  async killMaster (port: number, timeoutMs = 20_000): Promise<number> {
    const replica = await this.replicaOf(port)
    const node = this.#nodes.get(port)
    if (node === undefined) throw new Error(`${port} is not a node of this cluster`)
    await killRedis(node)
    await waitUntil(async () => /role:master/.test(await this.#cli(replica, 'INFO', 'replication').catch(() => '')), timeoutMs, `replica ${replica} promoted`)
    await waitUntil(async () => {
      const states = await Promise.all(this.alivePorts.map((p) => this.#cli(p, 'CLUSTER', 'INFO').catch(() => '')))
      return states.every((s) => s.includes('cluster_state:ok'))
    }, timeoutMs, 'cluster_state:ok on every node after the failover')
    return replica
  }

  /** `INFO commandstats` of node `port`: calls per command name (`evalsha`, `spublish`...). */
  async commandstats (port: number): Promise<CommandStats> {
    const stats: CommandStats = {}
    for (const line of (await this.#cli(port, 'INFO', 'commandstats')).split('\n')) {
      const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim())
      if (m !== null) stats[m[1]] = Number(m[2])
    }
    return stats
  }

  /**
   * An operator's connection to node `port` (not cluster-aware), closed at
   * teardown. It does not retry while the node is down.
   */
  async admin (port: number): Promise<Redis> {
    return await this.#admins.open(port)
  }

  /** One command on node `port` through a fresh connection; resolves to its reply as text. */
  async #cli (port: number, ...args: Array<string | number>): Promise<string> {
    return String(await this.#admins.call(port, ...args))
  }

  #close (redis: Redis): void {
    this.#admins.close(redis)
  }

  /** Kills every node. */
  async stop (): Promise<void> {
    this.#admins.closeAll()
    await Promise.all([...this.#nodes.values()].map(killRedis))
  }
}
