import neostandard from 'neostandard'

/**
 * Imports point one way (DESIGN.md "Layout"): routes -> plugins -> src ->
 * protocol, config. src/app.ts, src/server.ts and src/logger.ts are the
 * composition root: they build the Fastify app, so they may import
 * anything. The SDK (client/) imports protocol/ only.
 */
const restrict = (regex, message, extra = []) => ({
  'no-restricted-imports': ['error', { patterns: [{ regex, message }, ...extra] }]
})

export default [
  ...neostandard({
    ts: true,
    ignores: ['dist/**', 'coverage/**', '.tap/**', 'node_modules/**', 'tmp/**', 'test-output/**']
  }),
  {
    files: ['protocol/**/*.ts'],
    rules: restrict('^\\.\\./', 'protocol/ is the wire contract: it imports nothing of the project')
  },
  {
    files: ['config/**/*.ts'],
    rules: restrict('^\\.\\./', 'config/ imports nothing of the project')
  },
  {
    files: ['src/**/*.ts'],
    ignores: ['src/app.ts', 'src/server.ts', 'src/logger.ts'],
    rules: restrict('(^|/)(plugins|routes|client|test|bench|scripts)/', 'the core (src/) imports only src/, protocol/ and config/', [
      { group: ['fastify', 'fastify-plugin', '@fastify/*', '!@fastify/error'], message: 'the core knows no Fastify: put Fastify code in plugins/ or routes/' }
    ])
  },
  {
    files: ['plugins/**/*.ts'],
    rules: restrict('(^|/)(routes|client|test|bench|scripts)/', 'plugins/ import only plugins/, src/, protocol/ and config/')
  },
  {
    files: ['routes/**/*.ts'],
    rules: restrict('(^|/)(client|test|bench|scripts)/', 'routes/ import only plugins/, src/, protocol/ and config/')
  },
  {
    files: ['client/**/*.ts'],
    rules: restrict('(^|/)(src|plugins|routes|config|test|bench|scripts)/', 'the SDK (client/) imports only client/ and protocol/')
  }
]
