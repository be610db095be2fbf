import { fork } from 'node:child_process'

/**
 * Request/response over a child's IPC channel: every request carries an id,
 * the child answers with the same id. Used for client workers, the
 * publisher and the probe inside each server.
 */
export class Rpc {
  #child
  #next = 0
  #pending = new Map()

  constructor (child, idKey = 'rpcId') {
    this.#child = child
    this.idKey = idKey
    child.on('message', (msg) => {
      const id = msg?.[idKey]
      const waiter = this.#pending.get(id)
      if (waiter === undefined) return
      this.#pending.delete(id)
      clearTimeout(waiter.timer)
      if (msg.error !== undefined) waiter.reject(new Error(msg.error))
      else waiter.resolve(msg)
    })
    child.once('exit', (code, signal) => {
      for (const waiter of this.#pending.values()) {
        clearTimeout(waiter.timer)
        waiter.reject(new Error(`process exited (${code ?? signal}) before answering`))
      }
      this.#pending.clear()
    })
  }

  call (message, timeoutMs = 60000) {
    const id = ++this.#next
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(new Error(`no answer to ${JSON.stringify(message).slice(0, 80)} within ${timeoutMs} ms`))
      }, timeoutMs)
      this.#pending.set(id, { resolve, reject, timer })
      this.#child.send({ ...message, [this.idKey]: id })
    })
  }
}

/** Forks a bench module with its own Rpc; stderr is kept for error reports. */
export function forkWorker (modulePath, args = [], env = process.env, execArgv = []) {
  const child = fork(modulePath, args, { env, execArgv, stdio: ['ignore', 'inherit', 'pipe', 'ipc'] })
  let stderr = ''
  child.stderr.on('data', (chunk) => { stderr = (stderr + chunk.toString()).slice(-8000) })
  const rpc = new Rpc(child)
  return { child, rpc, stderr: () => stderr }
}

/** Answers Rpc requests in a child process: handlers[msg.cmd](msg) -> object. */
export function serve (handlers, idKey = 'rpcId') {
  process.on('message', async (msg) => {
    const id = msg?.[idKey]
    if (id === undefined) return
    const handler = handlers[msg.cmd]
    try {
      if (handler === undefined) throw new Error(`unknown command ${msg.cmd}`)
      const result = await handler(msg)
      process.send({ ...result, [idKey]: id })
    } catch (err) {
      process.send({ [idKey]: id, error: err?.stack ?? String(err) })
    }
  })
  process.on('disconnect', () => process.exit(0))
}
