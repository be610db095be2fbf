import { connect, type Alert, type AlertClient, type ClientError, type ResumeResult, type StateChange, type StreamName } from '../index.js'

/**
 * The demo page: log in with a development token, watch alerts arrive
 * (replayed ones marked, a notice when some may be missing), publish some,
 * log out. A reload logs in again and resumes where the page stood.
 */

const byId = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T

const stateEl = byId<HTMLSpanElement>('state')
const userEl = byId<HTMLSpanElement>('user')
const loginForm = byId<HTMLFormElement>('login')
const subInput = byId<HTMLInputElement>('sub')
const logoutButton = byId<HTMLButtonElement>('logout')
const publishForm = byId<HTMLFormElement>('publish')
const publishResult = byId<HTMLOutputElement>('publish-result')
const alertsList = byId<HTMLOListElement>('alerts')
const errorsList = byId<HTMLUListElement>('errors')
const gapNotice = byId<HTMLParagraphElement>('gap-notice')
const resumeStatus = byId<HTMLParagraphElement>('resume-status')

/** The logged-in user, kept per tab so that a reload logs in again (and resumes). */
const SUB_KEY = 'alert-gateway-demo:sub'

const SEVERITIES = new Set(['info', 'warning', 'critical'])
const MAX_SHOWN = 50

let client: AlertClient | null = null
let currentSub = ''
/** The token of the current session: logout needs one of the user's tokens. */
let userToken = ''
let serviceToken = ''

async function postJson (path: string, body: unknown, token?: string): Promise<Response> {
  const headers: Record<string, string> = {}
  if (token !== undefined) headers.authorization = `Bearer ${token}`
  if (body === undefined) return fetch(path, { method: 'POST', headers })
  headers['content-type'] = 'application/json'
  return fetch(path, { method: 'POST', headers, body: JSON.stringify(body) })
}

/** POST /dev/token: the development-only endpoint that mints tokens. */
async function mint (sub: string, service: boolean): Promise<string> {
  const res = await postJson('/dev/token', service ? { sub, service: true } : { sub })
  if (!res.ok) throw new Error(`POST /dev/token answered ${res.status}`)
  return ((await res.json()) as { token: string }).token
}

function note (text: string): void {
  const item = document.createElement('li')
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`
  errorsList.prepend(item)
  while (errorsList.children.length > 20) errorsList.lastElementChild?.remove()
}

function showState (change: StateChange): void {
  stateEl.dataset.state = change.state
  let text: string = change.state
  if (change.retryInMs !== undefined) text += ` in ${(change.retryInMs / 1000).toFixed(1)} s`
  if (change.code !== undefined) text += ` (close code ${change.code})`
  stateEl.textContent = text
  const loggedIn = change.state !== 'logged-out' && change.state !== 'closed'
  logoutButton.disabled = !loggedIn
  if (!loggedIn) note(`connection ${text}`)
}

/** Alert text is untrusted: it only ever goes into textContent, never into HTML. */
function showAlert (alert: Alert): void {
  const item = document.createElement('li')
  const severity = SEVERITIES.has(alert.severity) ? alert.severity : 'info'
  item.className = `alert severity-${severity}`
  item.dataset.id = alert.id
  if (alert.replay === true) item.dataset.replay = 'true'
  const badge = document.createElement('span')
  badge.className = 'severity'
  badge.textContent = severity
  const title = document.createElement('span')
  title.className = 'title'
  title.textContent = alert.title
  const time = document.createElement('time')
  time.dateTime = new Date(alert.ts).toISOString()
  time.textContent = new Date(alert.ts).toLocaleTimeString()
  item.append(time, badge)
  if (alert.replay === true) {
    const replayed = document.createElement('span')
    replayed.className = 'replayed'
    replayed.textContent = 'replayed'
    item.append(replayed)
  }
  item.append(title)
  if (alert.body !== undefined) {
    const body = document.createElement('p')
    body.className = 'body'
    body.textContent = alert.body
    item.append(body)
  }
  alertsList.prepend(item)
  while (alertsList.children.length > MAX_SHOWN) alertsList.lastElementChild?.remove()
}

function showError (error: ClientError): void {
  note(`${error.kind}: ${error.message}`)
}

/** Streams that may have lost alerts since the login: the notice stays up until the next one. */
const gapStreams = new Set<StreamName>()

function showGap (streams: StreamName[]): void {
  for (const stream of streams) gapStreams.add(stream)
  const names = [...gapStreams].sort().map((stream) => stream === 'all' ? 'broadcasts' : 'your own alerts').join(' and ')
  gapNotice.dataset.streams = [...gapStreams].sort().join(' ')
  gapNotice.textContent = `Some alerts may be missing (${names}): the gateway could not replay everything since this page last saw it.`
  gapNotice.hidden = false
}

function showResumed (result: ResumeResult): void {
  resumeStatus.textContent = `Resumed: ${result.replayed} alert(s) replayed, ${result.recovered ? 'nothing missing' : 'some may be missing'}.`
  if (!result.recovered) showGap(result.gaps)
}

function logIn (sub: string): void {
  client?.close()
  currentSub = sub
  sessionStorage.setItem(SUB_KEY, sub)
  userEl.textContent = `as ${sub}`
  gapNotice.hidden = true
  gapStreams.clear()
  resumeStatus.textContent = ''
  const session = connect({
    url: new URL('/ws', location.href),
    // A fresh token before every connect and on every re-auth request.
    getToken: async () => (userToken = await mint(sub, false)),
    onAlert: (alert) => {
      showAlert(alert)
      session.ack(alert.id)
    },
    onState: showState,
    onError: showError,
    onResumed: showResumed,
    onGap: (gap) => showGap(gap.streams)
  })
  client = session
}

loginForm.addEventListener('submit', (event) => {
  event.preventDefault()
  logIn(subInput.value.trim())
})

const storedSub = sessionStorage.getItem(SUB_KEY)
if (storedSub !== null) {
  subInput.value = storedSub
  logIn(storedSub)
}

logoutButton.addEventListener('click', () => {
  logoutButton.disabled = true
  sessionStorage.removeItem(SUB_KEY)
  // The gateway closes the socket with 4403; the client stops by itself.
  postJson('/auth/logout', undefined, userToken).then((res) => {
    note(`logout answered ${res.status}`)
  }, (err: Error) => note(`logout failed: ${err.message}`))
})

publishForm.addEventListener('submit', (event) => {
  event.preventDefault()
  const form = new FormData(publishForm)
  const body = String(form.get('body') ?? '')
  const alert = {
    target: form.get('target') === 'me' && currentSub !== '' ? { userId: currentSub } : { all: true },
    severity: String(form.get('severity')),
    title: String(form.get('title')),
    ...(body === '' ? {} : { body })
  }
  const send = async (): Promise<Response> => {
    if (serviceToken === '') serviceToken = await mint('demo-publisher', true)
    return postJson('/alerts', alert, serviceToken)
  }
  send().then(async (res) => {
    publishResult.textContent = `${res.status} ${await res.text()}`
  }, (err: Error) => {
    publishResult.textContent = `failed: ${err.message}`
  })
})
