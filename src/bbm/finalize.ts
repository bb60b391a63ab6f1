/**
 * Finalizing a migration: running the rest of it now, in this process, before code that needs it
 * done is deployed. Its runs take a free lane of the migration, or wait for lane 0 when every lane
 * is busy, so background workers may keep running meanwhile: no range runs twice.
 */
import { Backoff, sleep } from './backoff.ts';
import { resolveOptions } from './config.ts';
import { ConfigError } from './errors.ts';
import { CORRELATION_ID, defaultLibraryLogger } from './log.ts';
import { tellObservers } from './observe.ts';
import { WorkRegistry } from './work-registry.ts';
import { progressText } from './report-text.ts';
import { Runner } from './run.ts';
import { migrationReports, pause, resume } from './status.ts';
import type { FinalizeParams, MigrationReport, RunResult } from './types.ts';

/** Why finalizing stopped short of a finished migration. */
export class FinalizeError extends Error {
  override readonly name = 'FinalizeError';

  constructor(
    message: string,
    readonly report: MigrationReport | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Consecutive unexpected run errors (say, the database restarting) that finalizing sits out. */
const MAX_CONSECUTIVE_ERRORS = 5;

/** Runs the migration named to the end. Resolves with its final report once it is finished. */
export async function finalizeMigration(params: FinalizeParams): Promise<MigrationReport> {
  const { pool, name, observers = [], onProgress, progressEveryMs = 250 } = params;
  const options = resolveOptions({ intervalMs: 1_000, maxIntervalMs: 10_000, ...params });
  const registry = new WorkRegistry(params.work);
  const log = (params.logger ?? defaultLibraryLogger()).child(
    params.database === undefined ? {} : { database: params.database },
  );
  const report = async (): Promise<MigrationReport | undefined> => (await migrationReports(pool, { name }))[0];
  const address = params.database === undefined ? name : `${params.database}/${name}`;

  let current = await report();
  if (!current) throw new ConfigError(`no migration named ${JSON.stringify(name)}`);
  if (!registry.get(current.jobSignatureName)) {
    throw new ConfigError(`${name} runs work function ${current.jobSignatureName}, which the config does not register`);
  }
  // A deploy that needs the migration done gets it done: finalizing overrides a pause, says so,
  // and pauses it again if it stops before the end (an operator's pause outlives the attempt).
  let resumedFromPause = false;
  if (current.status === 'paused') {
    resumedFromPause = (await resume(pool, name)).length > 0;
    if (resumedFromPause)
      log.warn(
        { bbm_name: name },
        `${name} was paused: finalizing runs it anyway, and pauses it again if it stops before the end`,
      );
    current = (await report()) ?? current;
  }
  const runner = new Runner({
    pool,
    registry,
    options,
    log,
    hardStop: params.hardStop ?? new AbortController().signal,
    only: current.id,
  });
  const backoff = new Backoff(options.intervalMs, options.maxIntervalMs);
  let errors = 0;
  let lastProgress = 0;
  try {
    for (;;) {
      const settled = settledState(current, address);
      if (settled === 'finished') {
        onProgress?.(current);
        return current;
      }
      if (settled) throw new FinalizeError(settled, current);
      if (params.signal?.aborted) throw new FinalizeError(`interrupted at ${progressText(current)}`, current);

      const result = await runner.runOnce({ chain: true });
      tellObservers(observers, log, (observer) => observer.run?.(result));
      const waitMs = afterRun(result, backoff);
      if (result.outcome === 'error') {
        errors += 1;
        log.error({ err: result.error, [CORRELATION_ID]: result.runId }, 'finalize run failed');
        if (errors >= MAX_CONSECUTIVE_ERRORS)
          throw new FinalizeError(`giving up after ${errors} failed runs in a row`, current, { cause: result.error });
      } else {
        errors = 0;
      }
      if (result.outcome === 'aborted') throw new FinalizeError('stopped: the job in flight was rolled back', current);

      const now = Date.now();
      const changed = result.outcome !== 'job_succeeded';
      if (changed || now - lastProgress >= progressEveryMs) {
        // The report reads on another connection: the run begun ahead must not hold one meanwhile
        // (behind a pooler, it may be the server connection the report waits for).
        await runner.release();
        current = await report();
        if (!current) throw new FinalizeError(`migration ${name} was deleted`, undefined);
        lastProgress = now;
        if (!settledState(current, address)) onProgress?.(current);
      }
      if (waitMs > 0) {
        await runner.release();
        await sleep(waitMs, params.signal);
      }
    }
  } catch (error) {
    if (resumedFromPause && (await pause(pool, name).catch(() => [])).length > 0)
      log.warn({ bbm_name: name }, `${name} is paused again`);
    throw error;
  } finally {
    await runner.release();
  }
}

/**
 * null while the migration can still run; otherwise 'finished' or why it cannot be finished.
 * `address` is how a command names it (`database/name` in a fleet of several).
 */
function settledState(report: MigrationReport, address: string): string | null {
  switch (report.status) {
    case 'finished':
      return 'finished';
    case 'failed':
      return `failed (${report.failureErrorCode ?? 'unknown'}): ${report.failureMessage ?? ''}`;
    case 'paused':
      return 'paused while finalizing';
    // Approval is a gate a deploy must not open by itself (unlike a pause): no take would take it.
    case 'awaiting_approval':
      return `awaiting approval: approve it first (bbm approve --name ${address})`;
    default:
      return null;
  }
}

/** While the ranges left all run in other lanes, how long finalizing waits before it looks again. */
const LANES_BUSY_WAIT_MS = 50;

function afterRun(result: RunResult, backoff: Backoff): number {
  switch (result.outcome) {
    case 'job_failed':
    case 'error':
      return backoff.next();
    case 'lock_in_use':
      backoff.reset();
      return LANES_BUSY_WAIT_MS;
    default:
      backoff.reset();
      return 0;
  }
}
