import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { freePort } from './free-port.js'
import { AdminConnections, killRedis, spawnRedis, type RedisProcess } from './redis-process.js'
import { waitUntil } from './timeout.js'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

export interface SentinelSetupOptions {
  /** The master's name the Sentinels monitor. */
  name?: string
  /** AOF with fsync at every write on both data servers. Default: nothing on disk. */
  persistence?: boolean
}

/** A data server (master or replica) or a Sentinel, as started here. */
type Proc = RedisProcess

const SENTINELS = 3
const QUORUM = 2
const DOWN_AFTER_MS = 1000
const FAILOVER_TIMEOUT_MS = 5000

/**
 * A master, one replica and three Sentinels (quorum 2) on free loopback
 * ports, each in a temporary directory removed at teardown. Never the shared
 * server on 6379. Resolves once every Sentinel knows the replica and the two
 * other Sentinels, so a failover can start at once.
 */
export class RedisSentinelSetup {
  readonly name: string
  readonly sentinelPorts: number[]
  readonly #dir: string
  /** Data servers by port: the initial master and replica. */
  readonly #servers = new Map<number, Proc>()
  readonly #sentinels: Proc[] = []
  readonly #admins = new AdminConnections()

  private constructor (name: string, dir: string, sentinelPorts: number[]) {
    this.name = name
    this.#dir = dir
    this.sentinelPorts = sentinelPorts
  }

  /** Environment for a gateway following this master. */
  get env (): { REDIS_SENTINELS: string, REDIS_SENTINEL_NAME: string } {
    return { REDIS_SENTINELS: this.sentinelPorts.map((p) => `127.0.0.1:${p}`).join(','), REDIS_SENTINEL_NAME: this.name }
  }

  /** Ports of the data servers started (master and replica, whatever their role now). */
  get dataPorts (): number[] {
    return [...this.#servers.keys()]
  }

  static async start (t: Teardown, opts: SentinelSetupOptions = {}): Promise<RedisSentinelSetup> {
    const dir = await mkdtemp(join(tmpdir(), 'gw-sentinel-'))
    const [masterPort, replicaPort, ...sentinelPorts] = await Promise.all(Array.from({ length: 2 + SENTINELS }, () => freePort()))
    const setup = new RedisSentinelSetup(opts.name ?? 'gwmaster', dir, sentinelPorts)
    t.teardown(async () => {
      await setup.stop()
      await rm(dir, { recursive: true, force: true })
    })
    await setup.#startData(masterPort, [])
    await setup.#startData(replicaPort, ['--replicaof', '127.0.0.1', String(masterPort)], opts.persistence)
    await setup.#waitReplicaSynced(replicaPort)
    for (const [i, port] of sentinelPorts.entries()) await setup.#startSentinel(i, port, masterPort)
    await setup.#waitDiscovered()
    return setup
  }

  async #startData (port: number, extra: string[], persistence = false): Promise<void> {
    const storage = persistence ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']
    const dir = join(this.#dir, `data-${port}`)
    await mkdir(dir)
    this.#servers.set(port, await spawnRedis(port, [
      '--port', String(port), '--bind', '127.0.0.1', '--protected-mode', 'no', '--save', '',
      '--dir', dir, ...storage, '--loglevel', 'warning', ...extra
    ], dir))
  }

  async #startSentinel (index: number, port: number, masterPort: number): Promise<void> {
    const dir = join(this.#dir, `sentinel-${index}`)
    await mkdir(dir)
    // Sentinel rewrites its configuration file (discovered peers, epochs): it lives in its own directory.
    const conf = join(dir, 'sentinel.conf')
    await writeFile(conf, [
      `port ${port}`,
      'bind 127.0.0.1',
      'protected-mode no',
      `dir ${dir}`,
      'loglevel warning',
      `sentinel monitor ${this.name} 127.0.0.1 ${masterPort} ${QUORUM}`,
      `sentinel down-after-milliseconds ${this.name} ${DOWN_AFTER_MS}`,
      `sentinel failover-timeout ${this.name} ${FAILOVER_TIMEOUT_MS}`,
      `sentinel parallel-syncs ${this.name} 1`,
      ''
    ].join('\n'))
    this.#sentinels.push(await spawnRedis(port, [conf, '--sentinel'], dir))
  }

  async #waitReplicaSynced (port: number): Promise<void> {
    const replica = await this.admin(port)
    try {
      await waitUntil(async () => /master_link_status:up/.test(await replica.info('replication')), 10_000, 'the replica to sync')
    } finally {
      this.#close(replica)
    }
  }

  /** Every Sentinel knows a healthy replica and the other Sentinels. */
  async #waitDiscovered (): Promise<void> {
    const sentinels = await Promise.all(this.sentinelPorts.map((port) => this.admin(port)))
    const ready = async (sentinel: Redis): Promise<boolean> => {
      const replicas = await sentinel.call('SENTINEL', 'REPLICAS', this.name) as string[][]
      const peers = await sentinel.call('SENTINEL', 'SENTINELS', this.name) as string[][]
      const healthy = replicas.filter((r) => !/s_down|disconnected/.test(fieldOf(r, 'flags')) && fieldOf(r, 'master-link-status') === 'ok')
      return healthy.length >= 1 && peers.length >= SENTINELS - 1
    }
    try {
      await waitUntil(async () => (await Promise.all(sentinels.map(ready))).every(Boolean), 20_000, 'the Sentinels to know the replica and each other')
    } finally {
      for (const sentinel of sentinels) this.#close(sentinel)
    }
  }

  /**
   * An operator's connection to `port` (a data server or a Sentinel),
   * closed at teardown. It does not retry while the server is down.
   */
  async admin (port: number): Promise<Redis> {
    return await this.#admins.open(port)
  }

  /** The master as the first Sentinel that answers names it. */
  async currentMaster (): Promise<{ host: string, port: number }> {
    for (const port of this.sentinelPorts) {
      const sentinel = await this.admin(port)
      try {
        const [host, masterPort] = await sentinel.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', this.name) as [string, string]
        return { host, port: Number(masterPort) }
      } catch {
        // Try the next Sentinel.
      } finally {
        this.#close(sentinel)
      }
    }
    throw new Error('no Sentinel answers')
  }

  /**
   * Resolves once every Sentinel names another master than `port` and that
   * master takes writes: its port, and when a Sentinel first named it.
   */
  async waitMasterChange (port: number, timeoutMs = 15_000): Promise<{ port: number, namedAt: number }> {
    const sentinels = await Promise.all(this.sentinelPorts.map((p) => this.admin(p)))
    let named: number[] = []
    let namedAt = 0
    try {
      await waitUntil(async () => {
        named = await Promise.all(sentinels.map(async (s) => Number((await s.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', this.name) as string[])[1])))
        if (namedAt === 0 && named.some((p) => p !== port)) namedAt = Date.now()
        return named.every((p) => p === named[0] && p !== port)
      }, timeoutMs, `the Sentinels to name another master than ${port}`)
    } finally {
      for (const s of sentinels) this.#close(s)
    }
    const master = await this.admin(named[0])
    try {
      await waitUntil(async () => /role:master/.test(await master.info('replication')), timeoutMs, `${named[0]} to be master`)
    } finally {
      this.#close(master)
    }
    return { port: named[0], namedAt }
  }

  /**
   * `SENTINEL FAILOVER` (retried while the Sentinel has no replica to
   * promote yet) and waits until every Sentinel names the new master.
   * Resolves with the old and the new master's port, and when a Sentinel
   * first named the new one.
   */
  async failover (timeoutMs = 15_000): Promise<{ from: number, to: number, namedAt: number }> {
    const from = (await this.currentMaster()).port
    const sentinel = await this.admin(this.sentinelPorts[0])
    try {
      await waitUntil(async () => await sentinel.call('SENTINEL', 'FAILOVER', this.name).then(() => true, (err: Error) => {
        if (/NOGOODSLAVE|INPROG/.test(err.message)) return false
        throw err
      }), timeoutMs, 'a Sentinel to accept SENTINEL FAILOVER')
    } finally {
      this.#close(sentinel)
    }
    const { port: to, namedAt } = await this.waitMasterChange(from, timeoutMs)
    return { from, to, namedAt }
  }

  /** SIGKILLs the current master; resolves with its port once it is dead. */
  async killMaster (): Promise<number> {
    const { port } = await this.currentMaster()
    const proc = this.#servers.get(port)
    if (proc === undefined) throw new Error(`the master ${port} is not a server of this setup`)
    await killRedis(proc)
    return port
  }

  /** Names of the clients connected to data server `port` (CLIENT LIST). */
  async clientNames (port: number): Promise<string[]> {
    const list = await this.#admins.call(port, 'CLIENT', 'LIST') as string
    return list.split('\n').map((line) => /(?:^| )name=(\S*)/.exec(line)?.[1] ?? '').filter((name) => name !== '')
  }

  #close (redis: Redis): void {
    this.#admins.close(redis)
  }

  /** Kills every process (Sentinels first, so none starts a failover meanwhile). */
  async stop (): Promise<void> {
    this.#admins.closeAll()
    await Promise.all(this.#sentinels.map(killRedis))
    await Promise.all([...this.#servers.values()].map(killRedis))
  }
}

/** A reply of SENTINEL REPLICAS is a flat list of field, value. */
function fieldOf (flat: string[], field: string): string {
  const i = flat.indexOf(field)
  return i === -1 || i % 2 === 1 ? '' : flat[i + 1]
}
