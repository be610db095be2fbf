import t, { type Test } from 'tap'
import { addressKey } from '../../src/lib/client-address.js'
import { build } from '../helpers/build.js'
import { userToken } from '../helpers/tokens.js'

// The REST limit leaves address keys to @fastify/rate-limit's default key
// generator; the concurrent-connection slots (not a rate limit) use
// src/lib/client-address.ts. Both must count a client the same way.
/** A gateway allowing one logout per address and minute, and a logout from `remoteAddress`. */
async function oneLogoutPerAddress (t: Test): Promise<(remoteAddress: string, user: string) => Promise<number>> {
  const { app } = await build(t, { env: { REST_RATE_LIMIT_PER_MINUTE: '1' }, listen: false })
  return async (remoteAddress, user) =>
    (await app.inject({ method: 'POST', url: '/auth/logout', remoteAddress, headers: { authorization: `Bearer ${userToken(user)}` } })).statusCode
}

t.test('the gateway counts each IPv4-mapped client as its own IPv4 address', async (t) => {
  const logout = await oneLogoutPerAddress(t)
  t.equal(await logout('::ffff:192.0.2.1', 'mapped-1'), 204)
  t.equal(await logout('::ffff:198.51.100.7', 'mapped-2'), 204, 'another IPv4 client has its own budget')
  t.equal(await logout('192.0.2.1', 'mapped-3'), 429, 'the mapped and the plain form of one address share theirs')
})

t.test('the gateway counts IPv6 clients by /64 on the REST limit, as on the connection slots', async (t) => {
  const logout = await oneLogoutPerAddress(t)
  t.equal(await logout('2001:db8:1:2::1', 'v6-1'), 204)
  t.equal(await logout('2001:db8:1:2:ffff::9', 'v6-2'), 429, 'same /64, same budget')
  t.equal(await logout('2001:db8:1:3::1', 'v6-3'), 204, 'another /64, its own budget')
  t.equal(addressKey('2001:db8:1:2:ffff::9'), addressKey('2001:db8:1:2::1'), 'the slots group the same way')
  t.equal(addressKey('::ffff:192.0.2.1'), addressKey('192.0.2.1'))
})
