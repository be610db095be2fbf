/**
 * The package a profile's script URL belongs to: `ws`, `@fastify/jwt`...;
 * null outside `node_modules` and for the gateway's own builds, which the
 * benches compile under `node_modules/.cache`.
 */
export function packageOf (url) {
  const modules = url.lastIndexOf('node_modules/')
  if (modules === -1) return null
  const parts = url.slice(modules + 13).split('/')
  if (parts[0] === '.cache') return null
  return parts[0].startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]
}
