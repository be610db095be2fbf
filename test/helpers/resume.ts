import { userToken } from './tokens.js'
import { TestClient } from './ws-client.js'

type Frame = Record<string, unknown>

/** Positions a client resumes from (`since_all`, `since_user`). */
export interface Since {
  all?: string
  user?: string
}

/** A resume as a client makes it: the token in a header, the positions in the query. */
export async function openResumed (wsUrl: string, userId: string, since: Since): Promise<TestClient> {
  const query = new URLSearchParams()
  if (since.all !== undefined) query.set('since_all', since.all)
  if (since.user !== undefined) query.set('since_user', since.user)
  return await TestClient.open(`${wsUrl}?${query.toString()}`, { headers: { authorization: `Bearer ${userToken(userId)}` } })
}

/** The frames of a resume: welcome, the replayed alerts, and `resumed`. */
export async function readResume (client: TestClient): Promise<{ welcome: Frame, replayed: Frame[], resumed: Frame }> {
  const welcome = await client.next()
  const replayed: Frame[] = []
  let frame = await client.next()
  while (frame.type !== 'resumed') {
    replayed.push(frame)
    frame = await client.next()
  }
  return { welcome, replayed, resumed: frame }
}
