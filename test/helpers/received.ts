import type { TestClient } from './ws-client.js'
import { waitUntil } from './timeout.js'

type Frame = Record<string, unknown>

/** An alert as expected on one stream: its id, and its position when known. */
export interface ExpectedAlert {
  id: string
  pos?: string
}

/** What a client should have received, per stream, in order. */
export interface ExpectedStreams {
  all?: ExpectedAlert[]
  user?: ExpectedAlert[]
}

/** Marks a problem line about an alert no publish was answered 202 for. */
export const UNPUBLISHED = 'never answered 202 for this client:'

function seqOf (pos: string): number {
  return Number(pos.slice(pos.lastIndexOf(':') + 1))
}

export function epochOf (pos: string): string {
  return pos.slice(0, pos.lastIndexOf(':'))
}

/** Alerts of one epoch sorted by position: the order every session must see them in. */
export function inPositionOrder<T extends { pos: string }> (alerts: T[]): T[] {
  return [...alerts].sort((x, y) => seqOf(x.pos) - seqOf(y.pos))
}

/** The alert frames a client received on `stream`, in arrival order. */
export function alertsOn (client: Pick<TestClient, 'received'>, stream: 'all' | 'user'): Frame[] {
  return client.received.filter((f) => f.type === 'alert' && f.stream === stream)
}

/**
 * Everything wrong with what `client` received against `expected`: per
 * stream the same ids in the same order (each once: nothing missing, nothing
 * extra, nothing twice), at the expected positions, positions increasing.
 * Empty when all is well; each line says what and where.
 */
export function deliveryProblems (client: Pick<TestClient, 'received'>, expected: ExpectedStreams): string[] {
  const problems: string[] = []
  for (const stream of ['all', 'user'] as const) {
    const want = expected[stream]
    if (want === undefined) continue
    const got = alertsOn(client, stream)
    const gotIds = got.map((f) => f.id as string)
    const wantIds = want.map((a) => a.id)
    const counts = new Map<string, number>()
    for (const id of gotIds) counts.set(id, (counts.get(id) ?? 0) + 1)
    for (const [id, n] of counts) if (n > 1) problems.push(`${stream}: ${id} received ${n} times`)
    for (const id of wantIds) if (!counts.has(id)) problems.push(`${stream}: ${id} missing`)
    const wanted = new Set(wantIds)
    for (const frame of got) {
      if (!wanted.has(frame.id as string)) problems.push(`${stream}: ${UNPUBLISHED} ${String(frame.id)} (${String(frame.title)}, ${String(frame.pos)})`)
    }
    const inOrder = gotIds.filter((id) => wanted.has(id))
    if (new Set(inOrder).size === wantIds.length && inOrder.join() !== wantIds.join()) problems.push(`${stream}: out of position order: ${inOrder.join()} instead of ${wantIds.join()}`)
    const wantPos = new Map(want.map((a) => [a.id, a.pos]))
    for (const frame of got) {
      const expectedPos = wantPos.get(frame.id as string)
      if (expectedPos !== undefined && frame.pos !== expectedPos) problems.push(`${stream}: ${String(frame.id)} at ${String(frame.pos)}, published at ${expectedPos}`)
    }
    for (let i = 1; i < got.length; i++) {
      const [before, after] = [got[i - 1].pos as string, got[i].pos as string]
      if (epochOf(before) === epochOf(after) && seqOf(after) <= seqOf(before)) problems.push(`${stream}: ${after} after ${before}`)
    }
  }
  return problems
}

/** Waits until `client` has received an alert with each of `ids`. */
export async function waitForAlerts (client: TestClient, ids: string[], ms: number, what: string): Promise<void> {
  await waitUntil(() => {
    const have = new Set(client.received.map((f) => f.id))
    return ids.every((id) => have.has(id))
  }, ms, what)
}
