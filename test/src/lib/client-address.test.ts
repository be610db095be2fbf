import t from 'tap'
import { addressKey } from '../../../src/lib/client-address.js'

t.test('IPv4 addresses are counted as they are', async (t) => {
  t.equal(addressKey('203.0.113.7'), '203.0.113.7')
  t.equal(addressKey('127.0.0.1'), '127.0.0.1')
  t.not(addressKey('203.0.113.7'), addressKey('203.0.113.8'))
})

t.test('anything that is not IPv6 is returned as is', async (t) => {
  t.equal(addressKey(''), '')
  t.equal(addressKey('unix-socket'), 'unix-socket')
  t.equal(addressKey('1:2:3:4:5:6:7:8:9'), '1:2:3:4:5:6:7:8:9')
})

t.test('IPv6 addresses are grouped by their /64', async (t) => {
  t.equal(addressKey('2001:db8:1:2:3:4:5:6'), '2001:db8:1:2::/64')
  t.equal(addressKey('2001:db8:1:2:ffff:ffff:ffff:ffff'), '2001:db8:1:2::/64', 'same /64, same key')
  t.not(addressKey('2001:db8:1:3::1'), addressKey('2001:db8:1:2::1'), 'a different /64 is a different key')
  t.equal(addressKey('2001:0db8:0001:0002:0000:0000:0000:0001'), '2001:db8:1:2::/64', 'leading zeros')
  t.equal(addressKey('2001:DB8:1:2::1'), '2001:db8:1:2::/64', 'upper case')
})

t.test('compressed forms expand to the same key', async (t) => {
  const key = '2001:db8:0:0::/64'
  t.equal(addressKey('2001:db8::1'), key, ':: in the middle')
  t.equal(addressKey('2001:db8::'), key, ':: at the end')
  t.equal(addressKey('2001:db8:0:0:1::'), key)
  t.equal(addressKey('2001:db8:0:0:0:0:0:1'), key, 'uncompressed')
  t.equal(addressKey('::1'), '0:0:0:0::/64', 'loopback')
  t.equal(addressKey('::'), '0:0:0:0::/64', 'unspecified')
  t.equal(addressKey('1:2:3:4:5:6:7::'), '1:2:3:4::/64', ':: standing for one group')
  t.equal(addressKey('::2:3:4:5:6:7:8'), '0:2:3:4::/64')
})

t.test('IPv4-mapped IPv6 addresses count as the IPv4 address', async (t) => {
  t.equal(addressKey('::ffff:192.0.2.1'), '192.0.2.1')
  t.equal(addressKey('::FFFF:192.0.2.1'), '192.0.2.1', 'upper case')
  t.equal(addressKey('::ffff:c000:0201'), '192.0.2.1', 'the hex form')
  t.equal(addressKey('0:0:0:0:0:ffff:192.0.2.1'), '192.0.2.1', 'uncompressed')
  t.equal(addressKey('::ffff:192.0.2.1'), addressKey('192.0.2.1'), 'shares the IPv4 limit')
  t.equal(addressKey('::ffff:255.255.255.255'), '255.255.255.255')
  t.equal(addressKey('::ffff:0.0.0.0'), '0.0.0.0')
  t.equal(addressKey('::1.2.3.4'), '0:0:0:0::/64', 'the deprecated IPv4-compatible form is IPv6')
  t.equal(addressKey('64:ff9b::192.0.2.1'), '64:ff9b:0:0::/64', 'NAT64 is not a mapped address')
  t.equal(addressKey('1:2:3:4:5:6:1.2.3.4'), '1:2:3:4::/64', 'an IPv4 tail after six groups')
})

t.test('zone ids are ignored', async (t) => {
  t.equal(addressKey('fe80::1%eth0'), 'fe80:0:0:0::/64')
  t.equal(addressKey('fe80::1%eth0'), addressKey('fe80::2%wlan0'), 'same /64 whatever the interface')
  t.equal(addressKey('::ffff:192.0.2.1%1'), '192.0.2.1')
})
