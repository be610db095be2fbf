/**
 * Preloaded (`node --expose-gc --import ./bench/probe.mjs`) into every server
 * under test, the gateway and both references alike. On request over the IPC
 * channel it runs a full GC (when asked) and reports the process's own CPU
 * time (process.cpuUsage), memory and event-loop delay, or writes a heap
 * snapshot (`run.mjs --heap-snapshot`). It does nothing else,
 * so it costs the same in all three systems.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { writeHeapSnapshot } from 'node:v8'

if (typeof process.send === 'function') {
  const loop = monitorEventLoopDelay({ resolution: 10 })
  loop.enable()
  process.on('message', (msg) => {
    if (msg?.probeId === undefined) return
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
