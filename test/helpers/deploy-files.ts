import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parse } from 'yaml'

/** The parts of a docker-compose service the deployment tests read. */
export interface ComposeService {
  image?: string
  build?: string
  command?: string[]
  environment?: Record<string, string>
  ports?: string[]
  depends_on?: Record<string, { condition?: string }>
}

/** A file of `deploy/<example>/`, as text. */
export function deployFile (example: string, file: string): string {
  return readFileSync(fileURLToPath(new URL(`../../deploy/${example}/${file}`, import.meta.url)), 'utf8')
}

/** The services of `deploy/<example>/docker-compose.yml` (YAML merge keys applied). */
export function composeServices (example: string): Record<string, ComposeService> {
  return (parse(deployFile(example, 'docker-compose.yml'), { merge: true }) as { services: Record<string, ComposeService> }).services
}
