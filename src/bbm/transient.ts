/** Which failures are trouble that is not a migration's fault, so never charged to it. */
import { sqlStateOf } from '../store/db.ts';

/**
 * SQLSTATEs of trouble that is not a migration's fault: connections (08), resources (53, "too
 * many clients" among them), the server shutting down or starting (57P01-57P03), cancelled
 * statements and lock timeouts (57014, 55P03), serialization failures and deadlocks (40001,
 * 40P01), and a read-only server (25006: a standby, or a primary demoted by a failover).
 */
const TRANSIENT_STATES = /^(08|53|57P0[1-3]$|57014$|55P03$|40001$|40P01$|25006$)/;

/**
 * Network failures by their system error code. Others with a code (a TLS certificate refused, a
 * file missing) are misconfigurations: waiting would not mend them.
 */
const TRANSIENT_SYSTEM_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'EPIPE',
  'EAI_AGAIN',
  // A name that does not resolve yet: under Kubernetes, a service before its endpoints exist.
  'ENOTFOUND',
]);

/** Whether an error is transient: a SQLSTATE above, a network failure, or pg's own connection messages. */
export function isTransient(error: Error): boolean {
  const code = (error as { code?: unknown }).code;
  // First: EPIPE has the shape of a SQLSTATE.
  if (typeof code === 'string' && TRANSIENT_SYSTEM_CODES.has(code)) return true;
  const state = sqlStateOf(error);
  if (state !== undefined) return TRANSIENT_STATES.test(state);
  if (typeof code === 'string') return false;
  return /connection|terminated|timeout|socket/i.test(error.message);
}
