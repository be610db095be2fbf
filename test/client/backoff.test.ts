import t from 'tap'
import { AttemptLimiter, DEFAULT_BACKOFF, RecentIds, backoffDelay } from '../../client/index.js'

t.test('full jitter: every delay lies in [0, min(cap, base * 2^attempt))', async (t) => {
  const options = { baseMs: 500, capMs: 30_000 }
  t.same(DEFAULT_BACKOFF, options, 'defaults: 0.5 s base, 30 s cap')
  const ceilings = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
  for (const [attempt, ceiling] of ceilings.entries()) {
    t.equal(backoffDelay(attempt, options, () => 0), 0, `attempt ${attempt}: random 0 -> no wait`)
    const top = backoffDelay(attempt, options, () => 0.999999)
    t.ok(top < ceiling && top >= ceiling - 1, `attempt ${attempt}: random near 1 -> just under ${ceiling} (${top})`)
    t.equal(backoffDelay(attempt, options, () => 0.5), ceiling / 2, `attempt ${attempt}: random 0.5 -> half of ${ceiling}`)
  }
  t.equal(backoffDelay(10_000, options, () => 0.5), 15_000, 'a huge attempt count stays at the cap (no overflow)')
  t.equal(backoffDelay(3, { baseMs: 10, capMs: 50 }, () => 0.5), 25, 'base and cap are configurable')

  let seen = 0
  for (let i = 0; i < 2000; i++) {
    const delay = backoffDelay(i % 12)
    if (delay < 0 || delay >= Math.min(30_000, 500 * 2 ** (i % 12))) t.fail(`delay ${delay} out of bounds`)
    seen += delay
  }
  t.ok(seen > 0, 'Math.random by default')
})

t.test('the attempt limiter allows `max` attempts in any rolling window, then tells how long to wait', async (t) => {
  const limiter = new AttemptLimiter(5, 61_000)
  let now = 1_000_000
  for (let i = 0; i < 5; i++) {
    t.equal(limiter.waitMs(now), 0, `attempt ${i + 1} is allowed at once`)
    limiter.record(now)
    now += 1000
  }
  // Five attempts at 1_000_000 .. 1_004_000; now = 1_005_000.
  t.equal(limiter.waitMs(now), 56_000, 'the sixth waits until the first leaves the window')
  now += 56_000 - 1
  t.equal(limiter.waitMs(now), 1, 'still one millisecond too early')
  now += 1
  t.equal(limiter.waitMs(now), 0, 'allowed once the first attempt is a window old')
  limiter.record(now)
  t.equal(limiter.waitMs(now), 1000, 'the next one waits for the second attempt to leave')

  // No six attempts ever fall inside one window, whatever the clock does.
  const strict = new AttemptLimiter(5, 61_000)
  const made: number[] = []
  let clock = 0
  for (let step = 0; step < 500; step++) {
    clock += Math.floor(step * 7919 % 9000)
    if (strict.waitMs(clock) === 0) {
      strict.record(clock)
      made.push(clock)
    }
  }
  for (let i = 5; i < made.length; i++) {
    if (made[i] - made[i - 5] < 61_000) t.fail(`six attempts within ${made[i] - made[i - 5]} ms`)
  }
  t.ok(made.length > 10, `${made.length} attempts were made over ${clock} ms`)
})

t.test('recent ids: duplicates are refused, memory is bounded, the oldest id leaves first', async (t) => {
  const recent = new RecentIds(3)
  t.ok(recent.add('a'))
  t.notOk(recent.add('a'), 'a duplicate is refused')
  t.ok(recent.add('b'))
  t.ok(recent.add('c'))
  t.equal(recent.size, 3)
  t.ok(recent.add('d'), 'a fourth id evicts the oldest')
  t.equal(recent.size, 3, 'never more than the capacity')
  t.notOk(recent.has('a'), 'a was evicted')
  t.ok(recent.has('b') && recent.has('c') && recent.has('d'))
  t.ok(recent.add('a'), 'an evicted id counts as new again')
  t.notOk(recent.has('b'), 'and b, the next oldest, left')
  for (let i = 0; i < 10_000; i++) recent.add(`id-${i}`)
  t.equal(recent.size, 3, 'bounded after many ids')
})

t.test('the limiter and the id ring refuse sizes that would disable them', async (t) => {
  for (const max of [0, 0.5, -1, Number.NaN, Infinity]) {
    t.throws(() => new AttemptLimiter(max, 61_000), { name: 'RangeError', message: /AttemptLimiter: max must be a whole number of at least 1/ }, `max ${max}`)
    t.throws(() => new RecentIds(max), { name: 'RangeError', message: /RecentIds: capacity must be a whole number of at least 1/ }, `capacity ${max}`)
  }
  for (const windowMs of [0, -1, Number.NaN]) {
    t.throws(() => new AttemptLimiter(5, windowMs), { name: 'RangeError', message: /AttemptLimiter: windowMs must be a positive number/ }, `windowMs ${windowMs}`)
  }
  const one = new AttemptLimiter(1, 1000)
  one.record(0)
  t.equal(one.waitMs(10), 990, 'one attempt a window: a real wait, never NaN')
})
