import { join } from 'node:path'
import { loadConfig, type GatewayConfig } from '../../config/index.js'
import { TEST_SECRET } from './tokens.js'

/** A test configuration: the test secret, port 0, silent logs, plus `env`. */
export function testConfig (env: Record<string, string> = {}): GatewayConfig {
  return loadConfig({
    NODE_ENV: 'test',
    JWT_SECRET: TEST_SECRET,
    PORT: '0',
    LOG_LEVEL: 'silent',
    ...env
  })
}

/**
 * Settings of a development gateway on its own generated secret (kept in
 * `dir`): the only mode with the demo page and `POST /dev/token`.
 */
export function devSecretEnv (dir: string): Record<string, string> {
  return { NODE_ENV: 'development', JWT_SECRET: '', DEV_SECRET_FILE: join(dir, '.dev-secret') }
}
