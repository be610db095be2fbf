import fp from 'fastify-plugin'
import helmet from '@fastify/helmet'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { InsecureTransportError } from '../src/lib/errors.js'

/** Probes reach instances directly, inside the private network. */
const HOST = /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/
const PROBE_PATHS = new Set(['/health', '/ready', '/metrics'])

/**
 * The security headers of a JSON API for services (POST /alerts): a static
 * CSP that allows nothing (OWASP's advice for REST answers), the other
 * headers as elsewhere. @fastify/helmet builds its middleware anew for each
 * request, and parsing the page CSP with its per-request `connect-src` was
 * most of that build.
 */
export const API_HELMET = {
  contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } }
}

export interface SecurityOptions {
  production: boolean
  /** Pages are served over https (TLS here or at the proxy): allow wss only. */
  secure: boolean
  /** TLS is terminated by a trusted proxy: refuse requests it forwarded as http. */
  requireForwardedHttps: boolean
}

/**
 * Security headers (@fastify/helmet): HSTS in production, a CSP that lets a
 * page connect only to its own origin (wss to it included), nosniff, no
 * X-Powered-By. Behind a TLS-terminating proxy in production, a request
 * forwarded as plain http is refused with 403.
 */
async function securityPlugin (fastify: FastifyInstance, opts: SecurityOptions) {
  await fastify.register(helmet, {
    hsts: opts.production ? { maxAge: 31536000, includeSubDomains: true } : false,
    contentSecurityPolicy: {
      useDefaults: true,
      directives: {
        defaultSrc: ["'self'"],
        // 'self' alone does not cover WebSocket URLs in every browser: name
        // the socket origin, wss for https pages (never ws: from https).
        connectSrc: ["'self'", (req) => {
          const host = (req as { headers: Record<string, unknown> }).headers.host
          return typeof host === 'string' && HOST.test(host) ? `${opts.secure ? 'wss' : 'ws'}://${host}` : "'self'"
        }],
        scriptSrc: ["'self'"],
        objectSrc: ["'none'"],
        frameAncestors: ["'none'"],
        // Only where https is the rule: it would break a plain-http dev page.
        upgradeInsecureRequests: opts.secure ? [] : null
      }
    },
    crossOriginEmbedderPolicy: false
  })

  if (opts.requireForwardedHttps) {
    fastify.addHook('onRequest', async (request: FastifyRequest) => {
      if (request.protocol !== 'https' && !PROBE_PATHS.has(request.routeOptions.url ?? '')) {
        throw new InsecureTransportError()
      }
    })
  }
}

// After @fastify/websocket: its refusals of upgrades are known as upgrades.
export default fp(securityPlugin, { name: 'security', fastify: '5.x', dependencies: ['@fastify/websocket'] })
