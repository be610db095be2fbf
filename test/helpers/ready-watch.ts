import { setTimeout as sleep } from 'node:timers/promises'

export interface ReadySample {
  url: string
  /** When the request was sent and answered (epoch ms). */
  start: number
  end: number
  /** The HTTP status, or -1 when there was no answer within 3 s. */
  status: number
  error?: string
}

/** Polls /ready of each instance every 50 ms until stopped, keeping every answer. */
export class ReadyWatch {
  readonly samples: ReadySample[] = []
  #stopped = false
  readonly #done: Promise<void[]>

  constructor (urls: string[]) {
    this.#done = Promise.all(urls.map(async (url) => {
      while (!this.#stopped) {
        const start = Date.now()
        const answer = await fetch(`${url}/ready`, { signal: AbortSignal.timeout(3000) }).then((r) => r.status, (err: Error) => err)
        const sample = { url, start, end: Date.now() }
        this.samples.push(typeof answer === 'number' ? { ...sample, status: answer } : { ...sample, status: -1, error: `${answer.name}: ${answer.message}` })
        await sleep(50)
      }
    }))
  }

  async stop (): Promise<ReadySample[]> {
    this.#stopped = true
    await this.#done
    return this.samples
  }
}
