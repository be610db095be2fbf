import t from 'tap'
import { composeServices, deployFile } from '../helpers/deploy-files.js'

const read = (file: string): string => deployFile('sentinel', file)
const compose = { services: composeServices('sentinel') }
const conf = read('sentinel.conf').split('\n').map((line) => line.trim()).filter((line) => line !== '' && !line.startsWith('#'))
const gateways = Object.entries(compose.services).filter(([, service]) => service.build !== undefined)
const sentinels = Object.entries(compose.services).filter(([, service]) => (service.command ?? []).join(' ').includes('--sentinel'))

const port = /^port (\d+)$/.exec(conf.find((line) => line.startsWith('port ')) ?? '')?.[1] ?? '26379'
const monitor = conf.map((line) => /^sentinel monitor (\S+) (\S+) (\d+) (\d+)$/.exec(line)).find((m) => m !== null)

t.test('deploy/sentinel: the gateways name the master and the Sentinels sentinel.conf defines', async (t) => {
  t.ok(monitor, 'sentinel.conf monitors a master')
  const [, name, host, masterPort, quorum] = monitor as RegExpExecArray
  t.ok(compose.services[host], `the monitored host ${host} is a service`)
  t.match((compose.services[host]?.command ?? []).join(' '), /^redis-server/, `${host} runs redis-server`)
  t.ok(Object.values(compose.services).some((s) => (s.command ?? []).join(' ').includes(`--replicaof ${host} ${masterPort}`)), 'a replica follows the master')
  t.ok(sentinels.length >= 3 && sentinels.length % 2 === 1, `an odd number of Sentinels, at least 3 (${sentinels.length})`)
  t.ok(Number(quorum) > sentinels.length / 2 && Number(quorum) <= sentinels.length, `quorum ${quorum} is a majority of them`)
  for (const setting of ['down-after-milliseconds', 'failover-timeout']) t.ok(conf.some((line) => line.startsWith(`sentinel ${setting} ${name} `)), `${setting} set for ${name}`)

  t.equal(gateways.length, 2, 'two gateway instances')
  const expected = sentinels.map(([service]) => `${service}:${port}`).sort()
  for (const [service, { environment: env = {}, ports = [] }] of gateways) {
    t.equal(env.REDIS_SENTINEL_NAME, name, `${service}: REDIS_SENTINEL_NAME is the monitored name`)
    t.same((env.REDIS_SENTINELS ?? '').split(',').sort(), expected, `${service}: REDIS_SENTINELS lists every Sentinel on its port`)
    t.notOk(env.REDIS_URL ?? env.REDIS_CLUSTER_NODES, `${service}: no other Redis setting`)
    t.equal(env.NODE_ENV, 'production', `${service}: production mode`)
    t.notMatch(env.JWT_SECRET ?? '', /^[^$]/, `${service}: the JWT secret comes from the environment, not the file`)
    for (const published of ports) t.match(published, /^127\.0\.0\.1:/, `${service}: published on loopback only`)
  }
})
