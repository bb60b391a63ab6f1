/** Which failures are trouble that is not a migration's fault, so never charged to it. */
import { sqlStateOf } from '../store/db.ts';

/**
 * SQLSTATEs of trouble that is not a migration's fault: connections (08), resources (53, "too
 * many clients" among them), the server shutting down or starting (57P01-57P03), cancelled
 * statements and lock timeouts (57014, 55P03), serialization failures and deadlocks (40001,
 * 40P01), and a read-only server (25006: a standby, or a primary demoted by a failover).
 */
const TRANSIENT_STATES = /^(08|53|57P0[1-3]$|57014$|55P03$|40001$|40P01$|25006$)/;

/** Whether an error is transient: a SQLSTATE above, or a client-side connection failure (no SQLSTATE, a system error code or pg's connection messages). */
export function isTransient(error: Error): boolean {
  const state = sqlStateOf(error);
  if (state !== undefined) return TRANSIENT_STATES.test(state);
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string') return true;
  return /connection|terminated|timeout|ECONN|socket/i.test(error.message);
}
