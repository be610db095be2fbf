import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

export interface BenchRun {
  code: number | null
  stdout: string
  stderr: string
  /** The `--out=FILE` the run was given. */
  out: string
}

/**
 * Runs a bench script from the repository root with `args` and `--out=` a
 * temp file (removed at teardown); SIGINT after `killAfterMs`. The bench and
 * the servers it starts are not product code: their coverage is not collected.
 */
export async function runBench (t: Test, args: string[], killAfterMs: number): Promise<BenchRun> {
  const dir = mkdtempSync(path.join(tmpdir(), 'bench-run-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const out = path.join(dir, 'results.json')
  const child = spawn(process.execPath, [...args, `--out=${out}`], {
    cwd: ROOT,
    env: { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const killer = setTimeout(() => child.kill('SIGINT'), killAfterMs)
  const [code] = await once(child, 'exit') as [number | null]
  clearTimeout(killer)
  return { code, stdout, stderr, out }
}
