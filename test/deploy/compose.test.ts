import t from 'tap'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parse } from 'yaml'

interface Service {
  image?: string
  build?: string
  environment?: Record<string, string>
  ports?: string[]
}

const compose = parse(readFileSync(fileURLToPath(new URL('../../docker-compose.yml', import.meta.url)), 'utf8'), { merge: true }) as { services: Record<string, Service> }
const gateways = Object.entries(compose.services).filter(([, service]) => service.build !== undefined)

// Regression: the compose file ran development mode with a configured
// JWT_SECRET, so POST /dev/token minted tokens for anyone reaching the port.
t.test('docker-compose.yml never runs development helpers with a configured key', async (t) => {
  t.equal(gateways.length, 2, 'two gateway instances')
  for (const [name, service] of gateways) {
    const env = service.environment ?? {}
    const configuredKey = ['JWT_SECRET', 'JWT_PUBLIC_KEY_FILE', 'JWT_JWKS_URL'].filter((v) => env[v] !== undefined)
    if (env.NODE_ENV === 'production') continue
    t.same(configuredKey, [], `${name}: development mode runs on a generated development secret only`)
    t.ok(env.DEV_SECRET_FILE, `${name}: the instances share one generated secret`)
    for (const port of service.ports ?? []) t.match(port, /^127\.0\.0\.1:/, `${name}: published on loopback only`)
  }
})

t.test('docker-compose.yml runs Redis with AOF persistence, so history survives a Redis restart', async (t) => {
  const redis = compose.services.redis as Service & { command?: string[], volumes?: string[] }
  const command = (redis.command ?? []).join(' ')
  t.match(command, /--appendonly yes/)
  t.match(command, /--appendfsync (everysec|always)/)
  t.ok((redis.volumes ?? []).some((v) => v.endsWith(':/data')), 'the AOF lives in a volume')
})
