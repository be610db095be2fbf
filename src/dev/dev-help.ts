import type { GatewayConfig } from '../../config/index.js'
import type { Log } from '../lib/log.js'
import { mintToken } from './dev-tokens.js'

/** Development start banner: ready tokens and the commands to try them. */
export function printDevelopmentHelp (log: Log, config: GatewayConfig, address: string): void {
  const userToken = mintToken(config.jwt, 'dev-user', { ttl: '12h' })
  const serviceToken = mintToken(config.jwt, 'dev-service', { scope: 'alerts:publish', ttl: '12h' })
  const wsUrl = address.replace(/^http/, 'ws') + '/ws'
  const body = JSON.stringify({ target: { all: true }, severity: 'info', title: 'Hello from the gateway' })
  const lines = [
    '',
    `Development mode: tokens are signed with the secret in ${config.jwt.devSecretFile} (git-ignored).`,
    '',
    'User token (sub dev-user, 12h):',
    `  ${userToken}`,
    'Service token (scope alerts:publish, 12h):',
    `  ${serviceToken}`,
    '',
    'Connect (in another terminal, from this folder):',
    `  node -e "const s=new (require('ws'))('${wsUrl}?token=${userToken}');s.on('message',m=>console.log(String(m)))"`,
    '',
    'Publish an alert:',
    `  curl -i -X POST ${address}/alerts -H 'authorization: Bearer ${serviceToken}' -H 'content-type: application/json' -d '${body}'`,
    '',
    'More tokens: npm run token -- <sub> [--scope alerts:publish] [--ttl 1h]',
    ''
  ]
  // Printed to stdout, not the log: tokens never go to the log stream.
  process.stdout.write(lines.join('\n') + '\n')
  log.info('development help printed to stdout')
}
