/**
 * Preloaded (`node --expose-gc --import ./bench/probe.mjs`) into every server
 * under test, the gateway and both references alike. On request over the IPC
 * channel it runs a full GC (when asked) and reports the process's own CPU
 * time (process.cpuUsage), memory and event-loop delay, or writes a heap
 * snapshot (`run.mjs --heap-snapshot`), or samples allocations between an
 * `alloc: 'start'` and an `alloc: 'stop'` (`handshake-cost.mjs --alloc`).
 * It does nothing else, so it costs the same in all three systems.
 */
import { Session } from 'node:inspector/promises'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { writeHeapSnapshot } from 'node:v8'
import { packageOf } from './lib/areas.mjs'

/**
 * V8's sampling heap profiler, collected objects included: every
 * allocation, not what survives. One sample per 16 KB on average; the
 * profile's sizes are V8's estimates of all bytes allocated.
 */
let sampler = null
async function sampleAllocations (action) {
  if (action === 'start') {
    sampler = new Session()
    sampler.connect()
    await sampler.post('HeapProfiler.enable')
    await sampler.post('HeapProfiler.startSampling', { samplingInterval: 16384, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true })
    return {}
  }
  const { profile } = await sampler.post('HeapProfiler.stopSampling')
  sampler.disconnect()
  sampler = null
  const byArea = {}
  let bytes = 0
  const walk = (node) => {
    const url = node.callFrame.url
    const area = url === '' ? '(V8 and native)' : url.startsWith('node:') ? 'node' : packageOf(url) ?? 'own'
    byArea[area] = (byArea[area] ?? 0) + node.selfSize
    bytes += node.selfSize
    for (const child of node.children) walk(child)
  }
  walk(profile.head)
  return { bytes, byArea }
}

if (typeof process.send === 'function') {
  const loop = monitorEventLoopDelay({ resolution: 10 })
  loop.enable()
  process.on('message', (msg) => {
    if (msg?.probeId === undefined) return
    if (msg.alloc !== undefined) {
      sampleAllocations(msg.alloc).then(
        (result) => process.send({ probeId: msg.probeId, ...result }),
        (err) => process.send({ probeId: msg.probeId, error: String(err) }))
      return
    }
    if (typeof msg.heapSnapshot === 'string') {
      process.send({ probeId: msg.probeId, file: writeHeapSnapshot(msg.heapSnapshot) })
      return
    }
    if (msg.gc === true && typeof globalThis.gc === 'function') {
      globalThis.gc()
      globalThis.gc()
    }
    const cpu = process.cpuUsage()
    const mem = process.memoryUsage()
    const reply = {
      probeId: msg.probeId,
      cpuUs: cpu.user + cpu.system,
      rss: mem.rss,
      heapUsed: mem.heapUsed,
      heapTotal: mem.heapTotal,
      external: mem.external,
      arrayBuffers: mem.arrayBuffers,
      loopMaxMs: loop.max / 1e6,
      loopP99Ms: loop.percentile(99) / 1e6
    }
    if (msg.resetLoop === true) loop.reset()
    process.send(reply)
  })
  // The channel must not keep a server alive on its own.
  process.channel?.unref()
  // References have no shutdown path of their own; a normal exit lets
  // --cpu-prof write its profile. The gateway installs its own handler.
  if (process.env.BENCH_EXIT_ON_SIGTERM === '1') process.once('SIGTERM', () => process.exit(0))
}
