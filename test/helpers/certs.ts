import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

export interface TestCerts {
  caFile: string
  certFile: string
  keyFile: string
  ca: Buffer
}

/**
 * A throwaway CA and a server certificate for 127.0.0.1 and localhost,
 * written into `dir` with the openssl CLI.
 */
export function makeCerts (dir: string): TestCerts {
  const path = (name: string): string => join(dir, name)
  const run = (args: string[]): void => { execFileSync('openssl', args, { stdio: 'pipe' }) }
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=alert-gateway test CA',
    '-keyout', path('ca.key'), '-out', path('ca.crt')])
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', path('server.key'), '-out', path('server.csr')])
  writeFileSync(path('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n')
  run(['x509', '-req', '-in', path('server.csr'), '-CA', path('ca.crt'), '-CAkey', path('ca.key'), '-CAcreateserial',
    '-days', '1', '-extfile', path('server.ext'), '-out', path('server.crt')])
  return { caFile: path('ca.crt'), certFile: path('server.crt'), keyFile: path('server.key'), ca: readFileSync(path('ca.crt')) }
}
