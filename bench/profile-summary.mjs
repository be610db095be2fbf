#!/usr/bin/env node
/**
 * Summarises V8 CPU profiles (`--cpu-prof`, or `run.mjs --prof=DIR`): self
 * time by function and by package/file, and total (inclusive) time of the
 * project's own functions.
 *
 *   node bench/profile-summary.mjs DIR_OR_FILES... [--top=25]
 */
import { readdirSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import { packageOf } from './lib/areas.mjs'

const args = process.argv.slice(2)
const top = Number(args.find((a) => a.startsWith('--top='))?.slice(6) ?? 25)
/** `--callers=NAME`: the call paths (--depth frames, 6 by default) that lead to function NAME. */
const callersOf = args.find((a) => a.startsWith('--callers='))?.slice(10)
const callerPaths = new Map()
const depth = Number(args.find((a) => a.startsWith('--depth='))?.slice(8) ?? 6)
const files = args.filter((a) => !a.startsWith('--')).flatMap((p) =>
  statSync(p).isDirectory() ? readdirSync(p).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(p, f)) : [p])
if (files.length === 0) {
  process.stderr.write('usage: node bench/profile-summary.mjs DIR_OR_FILES... [--top=25]\n')
  process.exit(1)
}

function area (url) {
  if (url === '') return '(native / V8)'
  if (url.startsWith('node:')) return url
  const pkg = packageOf(url)
  if (pkg !== null) return pkg
  const cwd = `file://${process.cwd()}/`
  return url.startsWith(cwd) ? url.slice(cwd.length) : url
}

const selfByFunction = new Map()
const selfByArea = new Map()
const ownTotal = new Map()
let totalUs = 0
let idleUs = 0

for (const file of files) {
  const profile = JSON.parse(readFileSync(file, 'utf8'))
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const parent = new Map()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const selfUs = new Map()
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i + 1] ?? 0
    selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + dt)
  }
  for (const [id, us] of selfUs) {
    const node = byId.get(id)
    const { functionName, url, lineNumber } = node.callFrame
    if (functionName === '(idle)' || functionName === '(program)') {
      if (functionName === '(idle)') idleUs += us
      continue
    }
    totalUs += us
    if (callersOf !== undefined && node.callFrame.functionName === callersOf) {
      const frames = []
      for (let at = parent.get(id); at !== undefined && frames.length < depth; at = parent.get(at)) {
        const frame = byId.get(at).callFrame
        frames.push(`${frame.functionName || '(anonymous)'} ${area(frame.url)}:${frame.lineNumber + 1}`)
      }
      const path = frames.join(' < ')
      callerPaths.set(path, (callerPaths.get(path) ?? 0) + us)
    }
    const key = `${functionName || '(anonymous)'} ${area(url)}:${lineNumber + 1}`
    selfByFunction.set(key, (selfByFunction.get(key) ?? 0) + us)
    selfByArea.set(area(url), (selfByArea.get(area(url)) ?? 0) + us)
    // Inclusive time of the project's own functions (outside node_modules, or a bench build under node_modules/.cache).
    const seen = new Set()
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const frame = byId.get(at).callFrame
      if (!frame.url.startsWith('file://') || packageOf(frame.url) !== null) continue
      const own = `${frame.functionName || '(anonymous)'} ${area(frame.url)}:${frame.lineNumber + 1}`
      if (seen.has(own)) continue
      seen.add(own)
      ownTotal.set(own, (ownTotal.get(own) ?? 0) + us)
    }
  }
}

function print (title, map) {
  process.stdout.write(`\n${title}\n`)
  const rows = [...map.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)
  for (const [key, us] of rows) {
    process.stdout.write(`${(us / totalUs * 100).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(7)} ms  ${key}\n`)
  }
}

process.stdout.write(`${files.length} profile(s), ${(totalUs / 1000).toFixed(0)} ms on CPU (idle ${(idleUs / 1000).toFixed(0)} ms not counted)\n`)
print('self time by package or file', selfByArea)
print('self time by function', selfByFunction)
print('total time of project functions (self + callees)', ownTotal)
if (callersOf !== undefined) print(`call paths into ${callersOf}`, callerPaths)
