/**
 * `bbm verify` (verifyMigration): the work's check over every finished range of a migration, on
 * demand, read-only. Each range is checked in a READ ONLY transaction of its own, under the run
 * timeout, as a job would see it (from the previous range's last key, for a key that is not a
 * single integer column: store/verify.ts). It changes nothing, not even the sweep's records: what
 * it finds is for the operator (exit 1), and `bbm retry`/the sweep are how rows get fixed.
 */
import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import { resolveOptions } from './config.ts';
import { ConfigError } from './errors.ts';
import { migrationStatusName } from '../store/codes.ts';
import { checkRange, doJob, JobStops } from './job.ts';
import { rangeText, defaultLibraryLogger } from './log.ts';
import type { Job, JobKey, VerifyFound, VerifyParams, VerifyReport, Work } from './types.ts';
import { Validations } from './validate.ts';
import { WorkRegistry } from './work-registry.ts';
import { finishedRanges, migrationNamed } from '../store/verify.ts';

/** Ranges read a page at a time. */
const PAGE = 200;
/** Failing ranges listed in the report (all are counted). */
const LISTED = 20;

/** Checks every finished range of the migration named; resolves with what the check found. */
export async function verifyMigration(params: VerifyParams): Promise<VerifyReport> {
  const { pool, name, onProgress } = params;
  const options = resolveOptions(params);
  const log = params.logger ?? defaultLibraryLogger();
  const migration = await migrationNamed(pool, name);
  if (!migration) throw new Error(`no migration named ${JSON.stringify(name)}`);
  const registry = new WorkRegistry(params.work);
  const work = registry.get(migration.jobSignatureName);
  if (!work) {
    throw new ConfigError(
      `${name} runs work function ${migration.jobSignatureName}, which the config does not register`,
    );
  }
  if (!work.verify) throw new ConfigError(`work function ${work.name} has no check (verify) to run`);
  const client = await pool.connect();
  const report: VerifyReport = { name, rangesChecked: 0, rangesFailing: 0, rows: 0, failing: [], durationMs: 0 };
  const started = performance.now();
  let broken: Error | undefined;
  try {
    // The catalog lookups run in a transaction (their savepoints need one).
    await client.query('BEGIN READ ONLY');
    const validated = await new Validations(registry).check(client, migration).finally(() => client.query('ROLLBACK'));
    if (validated === 'not_mine')
      throw new ConfigError(`work function ${migration.jobSignatureName} is not registered`);
    if (validated instanceof Error) throw new ConfigError(`${name} cannot be checked: ${validated.message}`);
    const stops = new JobStops(params.signal ?? new AbortController().signal, options.runTimeoutMs);
    let found: VerifyFound = { rows: 0 };
    // The work's check alone, called as doJob calls a work: fenced, raced against the run timeout.
    const check: Work<JobKey> = {
      name: work.name,
      do: async (job: Job<JobKey>) => {
        found = await checkRange(work, job);
        return found.rows;
      },
    };
    let after: bigint | null = null;
    try {
      for (;;) {
        const page = await finishedRanges(client, migration.id, migration.batchSize, after, PAGE);
        for (const claimed of page) {
          after = claimed.end;
          // The one range of an empty key space has no rows to check.
          if (validated.target.key !== null && !claimed.startKey) continue;
          found = { rows: 0 };
          await client.query(`BEGIN READ ONLY; SET LOCAL statement_timeout = ${options.runTimeoutMs}`);
          const { stop, end } = stops.begin(options.runTimeoutMs);
          try {
            const worked = await doJob(
              {
                client,
                work: check,
                quoted: validated.quoted,
                key: validated.target.key,
                column: validated.target.column,
                args: migration.jobArguments,
                migration: { id: migration.id, name: migration.name, work: migration.jobSignatureName },
                claimed,
                lane: 0,
                runId: randomUUID(),
                log,
              },
              stop,
            );
            if (worked.failure) throw worked.failure;
          } finally {
            end();
            await client.query('ROLLBACK');
          }
          report.rangesChecked += 1;
          if (found.rows > 0) {
            report.rangesFailing += 1;
            report.rows += found.rows;
            if (report.failing.length < LISTED) {
              report.failing.push({
                jobId: claimed.id,
                range: rangeText(claimed),
                rows: found.rows,
                ...(found.example !== undefined && { example: found.example }),
              });
            }
          }
        }
        onProgress?.(report);
        if (page.length < PAGE) break;
      }
      if (report.rangesChecked === 0 && after === null) {
        throw new Error(`${name} has no finished range to check (${migrationStatusName(migration.status)})`);
      }
    } finally {
      stops.deafen();
    }
  } catch (error) {
    broken = error as Error;
    throw error;
  } finally {
    client.release(broken && !(broken instanceof ConfigError) ? broken : undefined);
  }
  report.durationMs = performance.now() - started;
  return report;
}
