/** POST /alerts with a service token; resolves to status and parsed body. */
export async function publish (baseUrl: string, token: string, body: unknown): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await fetch(`${baseUrl}/alerts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10000)
  })
  const text = await res.text()
  return { status: res.status, body: text === '' ? {} : JSON.parse(text) }
}

/** Polls `url` until it answers `status`, failing after `timeoutMs`. */
export async function waitForStatus (url: string, status: number, timeoutMs = 10000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let last = 0
  while (Date.now() < deadline) {
    try {
      last = (await fetch(url, { signal: AbortSignal.timeout(3000) })).status
      if (last === status) return
    } catch {
      last = -1
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`${url} still answers ${last}, not ${status}, after ${timeoutMs} ms`)
}
