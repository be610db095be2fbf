import t from 'tap'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const DOCKERFILE = readFileSync(fileURLToPath(new URL('../../Dockerfile', import.meta.url)), 'utf8')
const BUILD_TSCONFIG = JSON.parse(readFileSync(fileURLToPath(new URL('../../tsconfig.build.json', import.meta.url)), 'utf8')) as { include: string[] }

interface Instruction { op: string, args: string }

/** Dockerfile instructions with line continuations joined and comments dropped. */
function instructions (text: string): Instruction[] {
  return text.replace(/\\\r?\n/g, ' ').split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const space = line.indexOf(' ')
      return { op: line.slice(0, space).toUpperCase(), args: line.slice(space + 1).trim() }
    })
}

// hadolint is neither in Debian bookworm nor installable from npm without a
// binary download, so the rules that matter here are checked directly.
t.test('the Dockerfile is multi-stage, Node 24 LTS, non-root, production', async (t) => {
  const all = instructions(DOCKERFILE)
  const froms = all.filter((i) => i.op === 'FROM')
  t.ok(froms.length >= 2, 'multi-stage')
  for (const from of froms) t.match(from.args, /^node:24[-.\w]*(\s+AS\s+\w+)?$/i, `pinned Node 24 LTS base: ${from.args}`)
  const lastFrom = all.lastIndexOf(froms[froms.length - 1])
  const runtime = all.slice(lastFrom)
  const user = runtime.filter((i) => i.op === 'USER').pop()
  t.ok(user, 'the runtime stage sets USER')
  t.notMatch(user?.args, /^(root|0)(:|$)/, 'and it is not root')
  t.match(runtime.filter((i) => i.op === 'ENV').map((i) => i.args).join(' '), /NODE_ENV=production/, 'NODE_ENV=production')
  t.match(runtime.find((i) => i.op === 'HEALTHCHECK')?.args, /\/health/, 'HEALTHCHECK on /health')
  t.match(runtime.find((i) => i.op === 'CMD')?.args, /dist\/src\/server\.js/, 'runs the compiled server')
  t.match(runtime.filter((i) => i.op === 'RUN').map((i) => i.args).join(' '), /npm ci --omit=dev/, 'production dependencies only')
  t.notOk(all.some((i) => i.op === 'ADD'), 'COPY, not ADD')
  t.notOk(all.some((i) => i.op === 'RUN' && /\bsudo\b|curl [^|]*\|\s*(ba)?sh/.test(i.args)), 'no sudo, no curl | sh')
})

t.test('the build stage copies every folder the build compiles', async (t) => {
  const copied = instructions(DOCKERFILE).filter((i) => i.op === 'COPY').map((i) => i.args)
  for (const folder of BUILD_TSCONFIG.include) {
    t.ok(copied.some((args) => new RegExp(`(^|\\s)${folder}(\\s|/|$)`).test(args)), `COPY ${folder}`)
  }
})
