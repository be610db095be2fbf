import { parseArgs } from 'node:util'
import { ConfigError, loadConfig } from '../config/index.js'
import { mintToken } from '../src/dev/dev-tokens.js'

const usage = 'usage: npm run token -- <sub> [--scope alerts:publish] [--ttl 1h]'

try {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      scope: { type: 'string' },
      ttl: { type: 'string', default: '1h' }
    }
  })
  const sub = positionals[0]
  if (sub === undefined || positionals.length > 1) {
    process.stderr.write(usage + '\n')
    process.exit(2)
  }
  const config = loadConfig()
  const ttl = /^\d+$/.test(values.ttl) ? Number(values.ttl) * 1000 : values.ttl
  process.stdout.write(mintToken(config.jwt, sub, { scope: values.scope, ttl }) + '\n')
} catch (err) {
  const message = err instanceof ConfigError ? `invalid configuration: ${err.message}` : (err as Error).message
  process.stderr.write(message + '\n' + usage + '\n')
  process.exit(1)
}
