import t from 'tap'
import { composeServices, deployFile } from '../helpers/deploy-files.js'

const read = (file: string): string => deployFile('cluster', file)
const compose = { services: composeServices('cluster') }
const readme = read('README.md')
const services = Object.entries(compose.services)
const gateways = services.filter(([, service]) => service.build !== undefined)
const nodes = services.filter(([, service]) => (service.command ?? []).join(' ').includes('--cluster-enabled yes'))
const inits = services.filter(([, service]) => (service.command ?? []).join(' ').includes('--cluster create'))

/** The value following `flag` in a command (`--port 6379` -> `6379`). */
function option (command: string[], flag: string): string | undefined {
  const i = command.indexOf(flag)
  return i === -1 ? undefined : command[i + 1]
}

t.test('deploy/cluster: six cluster nodes, each announcing its own service name', async (t) => {
  t.equal(nodes.length, 6, 'six redis nodes')
  for (const [name, { command = [], image = '' }] of nodes) {
    t.match(command.join(' '), /^redis-server /, `${name} runs redis-server`)
    t.match(image, /^redis:(7|8)/, `${name}: Redis >= 7 (sharded pub/sub)`)
    t.ok(option(command, '--cluster-config-file'), `${name}: a cluster config file`)
    t.ok(option(command, '--cluster-node-timeout'), `${name}: a node timeout`)
    const announced = option(command, '--cluster-announce-hostname')
    if (announced !== undefined) {
      t.equal(announced, name, `${name} announces its own service name`)
      t.equal(option(command, '--cluster-preferred-endpoint-type'), 'hostname', `${name}: clients are told the name`)
    }
  }
})

t.test('deploy/cluster: the one-shot creates the cluster from every node, with a replica per master', async (t) => {
  t.equal(inits.length, 1, 'one service creates the cluster')
  const [name, init] = inits[0]
  const script = (init.command ?? []).join(' ')
  t.match(script, /--cluster-replicas 1/, 'one replica per master')
  t.match(script, /--cluster-yes/, 'no prompt')
  const replicas = Number(/--cluster-replicas (\d+)/.exec(script)?.[1])
  t.ok(nodes.length / (1 + replicas) >= 3, `at least 3 masters (${nodes.length} nodes, ${replicas} replica each)`)
  for (const [node, { command = [] }] of nodes) {
    t.match(script, new RegExp(`\\b${node}\\b`), `${name} names ${node}`)
    t.equal(init.depends_on?.[node]?.condition, 'service_healthy', `${name} waits for ${node}`)
    t.equal(option(command, '--port') ?? '6379', '6379', `${node} listens where ${name} expects it`)
  }
})

t.test('deploy/cluster: the gateways seed from the cluster nodes, after the cluster is created', async (t) => {
  t.equal(gateways.length, 2, 'two gateway instances')
  const known = new Map(nodes.map(([name, { command = [] }]) => [name, option(command, '--port') ?? '6379']))
  for (const [service, { environment: env = {}, ports = [], depends_on: dependsOn = {} }] of gateways) {
    const seeds = (env.REDIS_CLUSTER_NODES ?? '').split(',').filter((seed) => seed !== '')
    t.ok(seeds.length >= 1, `${service}: REDIS_CLUSTER_NODES names seed nodes`)
    for (const seed of seeds) {
      const [host, port] = seed.split(':')
      t.equal(known.get(host), port, `${service}: seed ${seed} is a cluster node on its port`)
    }
    t.notOk(env.REDIS_URL ?? env.REDIS_SENTINELS, `${service}: no other Redis setting`)
    t.equal(dependsOn[inits[0]?.[0] ?? '']?.condition, 'service_completed_successfully', `${service}: starts once the cluster is created`)
    t.equal(env.NODE_ENV, 'production', `${service}: production mode`)
    t.notMatch(env.JWT_SECRET ?? '', /^[^$]/, `${service}: the JWT secret comes from the environment, not the file`)
    for (const published of ports) t.match(published, /^127\.0\.0\.1:/, `${service}: published on loopback only`)
  }
  const example = /REDIS_CLUSTER_NODES=(\S+)/.exec(readme)?.[1]
  t.equal(example, gateways[0]?.[1].environment?.REDIS_CLUSTER_NODES, 'README.md shows the setting the compose file uses')
})
