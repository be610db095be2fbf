import type { BaseLogger } from 'pino'

/** The logger the core writes to: pino's, which Fastify's `app.log` is. */
export type Log = Pick<BaseLogger, 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'>
