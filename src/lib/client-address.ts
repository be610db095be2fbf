import { isIPv6 } from 'node:net'

/** The eight hextets of an address `isIPv6` accepted. */
function expandIPv6 (ip: string): number[] {
  let address = ip
  const zone = address.indexOf('%')
  if (zone !== -1) address = address.slice(0, zone)
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two hextets.
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(address)
  if (v4 !== null) {
    const [a, b, c, d] = v4.slice(1).map(Number)
    address = address.slice(0, v4.index) + ((a << 8) | b).toString(16) + ':' + ((c << 8) | d).toString(16)
  }
  const [head, tail] = address.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const missing = 8 - left.length - right.length
  const parts = [...left, ...new Array(tail === undefined ? 0 : missing).fill('0'), ...right]
  return parts.map((p) => parseInt(p, 16))
}

/**
 * The key a client address is counted under: an IPv4 address as is, an IPv6
 * address by its /64 (one subscriber usually holds a whole /64), an
 * IPv4-mapped IPv6 address as the IPv4 address it maps.
 */
export function addressKey (ip: string): string {
  if (!isIPv6(ip)) return ip
  const hextets = expandIPv6(ip)
  if (hextets.slice(0, 5).every((h) => h === 0) && hextets[5] === 0xffff) {
    return `${hextets[6] >> 8}.${hextets[6] & 255}.${hextets[7] >> 8}.${hextets[7] & 255}`
  }
  return hextets.slice(0, 4).map((h) => h.toString(16)).join(':') + '::/64'
}
