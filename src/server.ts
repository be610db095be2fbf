import type { Server as HttpsServer } from 'node:https'
import closeWithGrace from 'close-with-grace'
import { loadConfig, type GatewayConfig } from '../config/index.js'
import { buildApp } from './app.js'
import { tlsOptions } from './lib/tls.js'
import { printDevelopmentHelp } from './dev/dev-help.js'

let config: GatewayConfig
try {
  config = loadConfig()
} catch (err) {
  // loadConfig throws ConfigError only: one line naming the variable.
  process.stderr.write(`invalid configuration: ${(err as Error).message}\n`)
  process.exit(1)
}

const app = await buildApp(config)

closeWithGrace({
  // Sessions get SHUTDOWN_TIMEOUT_MS to finish; the rest of close() is quick.
  delay: config.shutdownTimeoutMs + 5000,
  // With TLS, SIGHUP reloads the certificate (below) instead of stopping.
  skip: config.tls !== undefined ? ['SIGHUP'] : [],
  logger: { error: (msg: unknown) => app.log.error(msg) },
  onSecondSignal: (signal) => app.log.warn({ signal }, 'second signal, exiting now')
}, async ({ signal, err }) => {
  if (err !== undefined) app.log.error({ err }, 'fatal error, shutting down')
  else app.log.info({ signal }, 'shutting down')
  await app.close()
})

const tls = config.tls
if (tls !== undefined) {
  // Certificate rotation without dropping sockets: new handshakes use the
  // files as they are now; open connections keep their session.
  process.on('SIGHUP', () => {
    try {
      (app.server as unknown as HttpsServer).setSecureContext(tlsOptions(tls))
      app.log.info('TLS certificate reloaded')
    } catch (err) {
      app.log.error({ err }, 'TLS certificate reload failed; keeping the current one')
    }
  })
}

try {
  const address = await app.listen({ host: config.host, port: config.port })
  if (config.jwt.devSecret) printDevelopmentHelp(app.log, config, address)
} catch (err) {
  app.log.fatal({ err }, 'could not start')
  process.exit(1)
}
