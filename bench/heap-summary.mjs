#!/usr/bin/env node
/**
 * Summarises a V8 heap snapshot (`run.mjs --heap-snapshot=DIR`): objects by
 * constructor (or closure by function name) with count and self size, and
 * per connection when the number of connections held is given.
 *
 *   node bench/heap-summary.mjs FILE.heapsnapshot [--per=CONNECTIONS] [--top=30] [--path=NAME]
 *
 * `--path=NAME` prints the shortest retaining path from the GC roots to one
 * object of constructor NAME: who keeps it alive.
 */
import { readFileSync } from 'node:fs'

const args = process.argv.slice(2)
const file = args.find((a) => !a.startsWith('--'))
const per = Number(args.find((a) => a.startsWith('--per='))?.slice(6) ?? 0)
const top = Number(args.find((a) => a.startsWith('--top='))?.slice(6) ?? 30)
const pathTo = args.find((a) => a.startsWith('--path='))?.slice(7)
if (file === undefined) {
  process.stderr.write('usage: node bench/heap-summary.mjs FILE.heapsnapshot [--per=CONNECTIONS] [--top=30]\n')
  process.exit(1)
}

const snapshot = JSON.parse(readFileSync(file, 'utf8'))
const fields = snapshot.snapshot.meta.node_fields
const types = snapshot.snapshot.meta.node_types[0]
const stride = fields.length
const typeAt = fields.indexOf('type')
const nameAt = fields.indexOf('name')
const sizeAt = fields.indexOf('self_size')
const { nodes, strings } = snapshot

const groups = new Map()
let total = 0
for (let i = 0; i < nodes.length; i += stride) {
  const type = types[nodes[i + typeAt]]
  const size = nodes[i + sizeAt]
  total += size
  let name = strings[nodes[i + nameAt]]
  if (type === 'string' || type === 'concatenated string' || type === 'sliced string') name = '(strings)'
  else if (type === 'code') name = '(code)'
  else if (type === 'number') name = '(heap numbers)'
  const key = `${type}: ${name.length > 60 ? name.slice(0, 57) + '...' : name}`
  const group = groups.get(key) ?? { count: 0, size: 0 }
  group.count++
  group.size += size
  groups.set(key, group)
}

process.stdout.write(`${file}: ${(total / 2 ** 20).toFixed(1)} MiB in ${nodes.length / stride} nodes${per > 0 ? `, ${per} connections` : ''}\n\n`)
process.stdout.write(`${'self size'.padStart(11)} ${'count'.padStart(9)}${per > 0 ? `${'B/conn'.padStart(9)}${'n/conn'.padStart(8)}` : ''}  kind: constructor\n`)
for (const [key, g] of [...groups.entries()].sort((a, b) => b[1].size - a[1].size).slice(0, top)) {
  const perConn = per > 0 ? `${(g.size / per).toFixed(0).padStart(9)}${(g.count / per).toFixed(2).padStart(8)}` : ''
  process.stdout.write(`${(g.size / 1024).toFixed(0).padStart(8)} KB ${String(g.count).padStart(9)}${perConn}  ${key}\n`)
}

if (pathTo !== undefined) {
  const edgeFields = snapshot.snapshot.meta.edge_fields
  const edgeTypes = snapshot.snapshot.meta.edge_types[0]
  const edgeStride = edgeFields.length
  const countAt = fields.indexOf('edge_count')
  const { edges } = snapshot
  const nodeCount = nodes.length / stride
  const firstEdge = new Uint32Array(nodeCount + 1)
  for (let n = 0, e = 0; n < nodeCount; n++) {
    firstEdge[n] = e
    e += nodes[n * stride + countAt] * edgeStride
    firstEdge[n + 1] = e
  }
  // Breadth-first from the root, ignoring weak edges: the first time a node
  // is reached is through its shortest strong retaining path.
  const via = new Int32Array(nodeCount).fill(-1)
  const viaEdge = new Int32Array(nodeCount).fill(-1)
  via[0] = 0
  const queue = [0]
  let found = -1
  for (let q = 0; q < queue.length && found === -1; q++) {
    const n = queue[q]
    for (let e = firstEdge[n]; e < firstEdge[n + 1]; e += edgeStride) {
      if (edgeTypes[edges[e]] === 'weak') continue
      const to = edges[e + 2] / stride
      if (via[to] !== -1) continue
      via[to] = n
      viaEdge[to] = e
      queue.push(to)
      if (strings[nodes[to * stride + nameAt]] === pathTo && types[nodes[to * stride + typeAt]] === 'object') {
        found = to
        break
      }
    }
  }
  if (found === -1) {
    process.stdout.write(`\nno ${pathTo} reachable from the roots\n`)
  } else {
    const steps = []
    for (let n = found; n !== 0; n = via[n]) {
      const e = viaEdge[n]
      const type = edgeTypes[edges[e]]
      const nameOrIndex = edges[e + 1]
      const label = type === 'element' || type === 'hidden' ? `[${nameOrIndex}]` : strings[nameOrIndex]
      steps.push(`${strings[nodes[via[n] * stride + nameAt]]} --${type}:${label}--> ${strings[nodes[n * stride + nameAt]]}`)
    }
    process.stdout.write(`\nshortest retaining path to a ${pathTo}:\n  ${steps.reverse().join('\n  ')}\n`)
  }
}
