/**
 * A worker's start-up waits for its database as its loop does: a server that refuses connections,
 * has no slot free ("too many clients"), is starting up or is a standby (after a failover the old
 * primary is one) is retried with backoff, not a reason to exit; under Kubernetes exiting would be
 * a restart loop. Anything else (a wrong password, a missing database) still fails at once.
 */
import type pg from 'pg';
import { inRecovery } from '../store/health.ts';
import { sqlStateOf } from '../store/db.ts';
import { Backoff, jittered, sleep } from './backoff.ts';
import type { Logger } from './log.ts';
import { isTransient } from './transient.ts';

const FIRST_WAIT_MS = 1_000;
const MAX_WAIT_MS = 30_000;

/** The server is a standby: it takes no writes. Read-only, as a write there would fail (25006). */
class StandbyError extends Error {
  readonly code = '25006';
  constructor() {
    super('the server is a standby (in recovery): waiting for a primary');
  }
}

/**
 * Runs `step` on a primary once the database lets it, retrying transient failures with backoff;
 * one log line when the wait begins or its reason changes, one when it ends. Undefined when
 * `signal` aborts the wait.
 */
export async function whenDatabaseReady<T>(
  pool: pg.Pool,
  step: () => Promise<T>,
  { log, signal }: { log: Logger; signal: AbortSignal },
): Promise<T | undefined> {
  const backoff = new Backoff(FIRST_WAIT_MS, MAX_WAIT_MS);
  const startedAt = Date.now();
  let waitingFor: string | undefined;
  while (!signal.aborted) {
    try {
      if (await inRecovery(pool)) throw new StandbyError();
      const result = await step();
      if (waitingFor !== undefined) log.info({ waited_ms: Date.now() - startedAt }, 'the database is ready: starting');
      return result;
    } catch (thrown) {
      const error = thrown instanceof Error ? thrown : new Error(String(thrown));
      if (!isTransient(error)) throw error;
      const code = (error as { code?: unknown }).code;
      const reason = sqlStateOf(error) ?? (typeof code === 'string' ? code : error.message);
      const waitMs = jittered(backoff.next(), 0.2);
      if (reason !== waitingFor) {
        waitingFor = reason;
        log.warn({ err: error, retry_in_ms: waitMs }, `waiting for the database: ${error.message}`);
      }
      await sleep(waitMs, signal);
    }
  }
  return undefined;
}
