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
