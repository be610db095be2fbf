import t from 'tap'
import { MemoryStorage, type PositionStorage } from '../../client/index.js'
import { PositionBook } from '../../client/position-book.js'
import { FakeServer, deferred, jwt, settle } from './fake-socket.js'
import { Recorded } from './harness.js'

/*
 * Which positions a connect resumes from when memory and storage disagree.
 * The README: a storage that cannot be written is reported, and the client
 * carries on with the positions in memory.
 */

const KEY = 'p:'
const STALE = { all: 'e1:1', user: 'e2:1' }
const NEWER = { all: 'e1:50', user: 'e2:7' }

/** A book for user u1 that stands at NEWER, on `storage` holding STALE. */
async function bookAtNewer (storage: PositionStorage): Promise<{ book: PositionBook, errors: string[] }> {
  const errors: string[] = []
  const book = new PositionBook(storage, KEY, (message) => errors.push(message))
  book.load(await book.read('u1'))
  book.moveTo(NEWER)
  return { book, errors }
}

/** A storage that holds STALE for u1 and whose writes do what `write` says. */
function storageWith (write: (key: string, value: string) => void | Promise<void>): MemoryStorage & PositionStorage {
  const storage = new MemoryStorage()
  storage.setItem(KEY + 'u1', JSON.stringify(STALE))
  return Object.assign(storage, { setItem: write })
}

t.test('the last write failed: the next connect resumes from memory, not the stale stored copy', async (t) => {
  const sync = await bookAtNewer(storageWith(() => { throw new Error('QuotaExceededError') }))
  t.same(sync.book.load(await sync.book.read('u1')), NEWER, 'a write that threw')
  t.same(sync.errors, ['could not store the positions: QuotaExceededError'])

  const rejected = await bookAtNewer(storageWith(async () => { throw new Error('disk full') }))
  await settle()
  t.same(rejected.book.load(await rejected.book.read('u1')), NEWER, 'an async write that failed')
  t.same(rejected.errors, ['could not store the positions: disk full'])
})

t.test('a write still under way: memory is newer and wins; once it landed, storage is read again', async (t) => {
  const write = deferred<void>()
  const storage = storageWith(async () => write.promise)
  const { book } = await bookAtNewer(storage)
  t.same(book.load(await book.read('u1')), NEWER, 'pending: memory')
  write.resolve()
  await settle()
  // Another tab sharing the storage moved on meanwhile: what is stored counts again.
  MemoryStorage.prototype.setItem.call(storage, KEY + 'u1', JSON.stringify({ all: 'e1:60', user: 'e2:9' }))
  t.same(book.load(await book.read('u1')), { all: 'e1:60', user: 'e2:9' }, 'landed: storage')
})

t.test('a failed write followed by one that worked: storage is read again', async (t) => {
  let fail = true
  const storage = storageWith((key, value) => {
    if (fail) throw new Error('QuotaExceededError')
    MemoryStorage.prototype.setItem.call(storage, key, value)
  })
  const { book } = await bookAtNewer(storage)
  fail = false
  book.advance('all', 'e1:51')
  t.same(book.load(await book.read('u1')), { ...NEWER, all: 'e1:51' })
  MemoryStorage.prototype.setItem.call(storage, KEY + 'u1', JSON.stringify(STALE))
  t.same(book.load(await book.read('u1')), STALE, 'saved: the stored copy counts, whatever it holds')
})

t.test('changes made while an async write was under way keep memory ahead until they are written too', async (t) => {
  const writes: Array<ReturnType<typeof deferred<void>>> = []
  const storage = storageWith(async () => {
    const write = deferred<void>()
    writes.push(write)
    return write.promise
  })
  const { book } = await bookAtNewer(storage)
  book.advance('all', 'e1:52')
  writes[0].resolve()
  await settle()
  t.same(book.load(await book.read('u1')), { ...NEWER, all: 'e1:52' }, 'the first write landed, the second is under way')
  t.equal(writes.length, 2)
})

t.test('memory of another user never stands in', async (t) => {
  const storage = storageWith(() => { throw new Error('QuotaExceededError') })
  const { book } = await bookAtNewer(storage)
  t.same(book.load(await book.read('u2')), {}, 'nothing stored for u2: nothing, not u1\'s unsaved positions')
  MemoryStorage.prototype.setItem.call(storage, KEY + 'u3', JSON.stringify(STALE))
  t.same(book.load(await book.read('u3')), STALE, 'u3\'s stored positions')
})

t.test('a client whose storage reads but cannot write resumes from the positions in memory', async (t) => {
  const server = new FakeServer()
  const storage = storageWith(() => { throw new Error('QuotaExceededError') })
  const rec = new Recorded(t, { url: 'ws://gateway.test/ws', getToken: () => jwt('u1'), WebSocket: server.WebSocket, storage, storageKeyPrefix: KEY, backoff: { baseMs: 1, capMs: 1 } })
  const first = await server.socket(1)
  t.same(first.since, { since_all: STALE.all, since_user: STALE.user }, 'the first connect reads storage')
  first.welcome('u1')
  first.deliver({ type: 'resumed', recovered: true, replayed: 0, pos: NEWER })
  first.serverClose(1011)
  const second = await server.socket(2)
  t.same(second.since, { since_all: NEWER.all, since_user: NEWER.user }, 'the reconnect resumes where the client stood, not from the stale copy')
  t.match(rec.errors, [{ kind: 'storage', message: /could not store/ }])
})
