import { connect, type Alert, type AlertClient, type ClientError, type StateChange } from '../index.js'

/** The demo page: log in with a development token, watch alerts arrive, publish some, log out. */

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
  const badge = document.createElement('span')
  badge.className = 'severity'
  badge.textContent = severity
  const title = document.createElement('span')
  title.className = 'title'
  title.textContent = alert.title
  const time = document.createElement('time')
  time.dateTime = new Date(alert.ts).toISOString()
  time.textContent = new Date(alert.ts).toLocaleTimeString()
  item.append(time, badge, title)
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

loginForm.addEventListener('submit', (event) => {
  event.preventDefault()
  const sub = subInput.value.trim()
  client?.close()
  currentSub = sub
  userEl.textContent = `as ${sub}`
  const session = connect({
    url: new URL('/ws', location.href),
    // A fresh token before every connect and on every re-auth request.
    getToken: async () => (userToken = await mint(sub, false)),
    onAlert: (alert) => {
      showAlert(alert)
      session.ack(alert.id)
    },
    onState: showState,
    onError: showError
  })
  client = session
})

logoutButton.addEventListener('click', () => {
  logoutButton.disabled = true
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
