import { readFileSync } from 'node:fs'
import type { SecureContextOptions } from 'node:tls'

/** The TLS options of the server, read from the files now (at start and on SIGHUP). */
export function tlsOptions (files: { certFile: string, keyFile: string }): SecureContextOptions {
  return { cert: readFileSync(files.certFile), key: readFileSync(files.keyFile), minVersion: 'TLSv1.2' }
}
