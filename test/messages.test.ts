/**
 * Messages from work functions are data: whatever text a work throws (a NUL byte, which a
 * PostgreSQL text column refuses, or a lone UTF-16 surrogate) is stored, sanitised, as the
 * attempt's error, and the range is retried and failed as for any other error.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { RunResult, Work } from '../src/bbm/types.ts';
import { ErrorCode, JobStatus, MigrationStatus } from '../src/store/codes.ts';
import { MESSAGE_LIMIT, storableMessage } from '../src/store/messages.ts';
import { failMigration, holdAfterRunError, holdRunnable } from '../src/store/migration-rows.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, jobRanges, migrationRow, range, testWorker } from './support/engine.ts';

const THROWN = 'bad\u0000byte \ud800 here';
const STORED = 'bad\\u0000byte \ufffd here';
/** No lone surrogates: UTF-8 would replace them, so the text survives a round trip unchanged. */
const wellFormed = (text: string) => Buffer.from(text, 'utf8').toString('utf8') === text;

describe('messages of work functions', () => {
  const db = useTestDatabase();

  it('stores a message with a NUL byte and a lone surrogate as the attempt error, retries, and fails with max_job_retry', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 6));
    const attempts: number[] = [];
    const broken: Work = {
      name: 'test.broken',
      async do(job) {
        await job.query('UPDATE items SET touched = touched + 1 WHERE id BETWEEN $1 AND $2', [job.start, job.end]);
        if (job.start <= 3n && 3n <= job.end) {
          attempts.push(job.attempt);
          throw new Error(THROWN);
        }
      },
    };
    await enqueue(pool, { name: 'broken', work: broken.name, table: 'items', batchSize: 3 });

    // Runs one at a time (not drain, which stops at the first run error): a run error here is
    // the defect this file is about, and must show as an outcome, not end the loop.
    const worker = testWorker(pool, { work: [broken], maxAttempts: 3, runErrorHoldMs: 1 });
    const results: RunResult[] = [];
    for (let i = 0; i < 50; i += 1) {
      const result = await worker.runOnce();
      results.push(result);
      if (result.outcome === 'no_job') break;
    }

    expect(results.filter((r) => r.outcome === 'error').map((r) => r.error?.message)).toEqual([]);
    expect(attempts).toEqual([1, 2, 3]);
    const failedRuns = results.filter((r) => r.outcome === 'job_failed');
    expect(failedRuns).toHaveLength(3);
    expect(failedRuns.every((r) => r.error?.message === THROWN)).toBe(true);

    const { rows } = await pool.query<{
      status: number;
      attempts: number;
      failure_error_code: number;
      failure_message: string;
    }>(
      `SELECT j.status, j.attempts, j.failure_error_code, j.failure_message FROM batched_background_migration_jobs j
       WHERE j.min_value = 1`,
    );
    expect(rows).toEqual([
      { status: JobStatus.failed, attempts: 3, failure_error_code: ErrorCode.unknown, failure_message: STORED },
    ]);
    const row = await migrationRow(pool, 'broken');
    expect(row).toMatchObject({ status: MigrationStatus.failed, failure_error_code: ErrorCode.max_job_retry });
    expect(row?.failure_message).toContain(`last error: ${STORED}`);
    expect(await jobRanges(pool, 'broken')).toEqual([
      { min: 1, max: 3, status: JobStatus.failed, attempts: 3 },
      { min: 4, max: 6, status: JobStatus.finished, attempts: 1 },
    ]);
  });
});

describe('the store functions that write messages', () => {
  const db = useTestDatabase();

  it('store run-error holds, hold reasons and failure messages sanitised', async () => {
    const { pool } = db();
    const reasons = async (name: string) =>
      (
        await pool.query(
          'SELECT status, hold_reason, failure_error_code, failure_message FROM batched_background_migrations WHERE name = $1',
          [name],
        )
      ).rows[0] as Record<string, unknown>;
    const held = await enqueue(pool, { name: 'held', work: 'w', table: 'items', batchSize: 10 });
    expect(
      await holdAfterRunError(pool, held, {
        reason: THROWN,
        failureMessage: THROWN,
        holdMs: 60_000,
        maxHoldMs: 60_000,
        maxErrors: 2,
      }),
    ).toEqual({ failed: false, heldForMs: 60_000 });
    expect(await reasons('held')).toMatchObject({ hold_reason: STORED, failure_message: null });
    expect(
      await holdAfterRunError(pool, held, {
        reason: THROWN,
        failureMessage: THROWN,
        holdMs: 1,
        maxHoldMs: 1,
        maxErrors: 2,
      }),
    ).toEqual({ failed: true });
    expect(await reasons('held')).toMatchObject({
      status: MigrationStatus.failed,
      failure_error_code: ErrorCode.run_error,
      failure_message: STORED,
    });

    const failed = await enqueue(pool, { name: 'failed', work: 'w', table: 'items', batchSize: 10 });
    await failMigration(pool, failed, ErrorCode.invalid_table, THROWN);
    expect(await reasons('failed')).toMatchObject({ status: MigrationStatus.failed, failure_message: STORED });

    await enqueue(pool, { name: 'waiting', work: 'w', table: 'items', batchSize: 10 });
    expect((await holdRunnable(pool, { holdMs: 60_000, reason: THROWN })).map((h) => h.reason)).toEqual([STORED]);
    expect(await reasons('waiting')).toMatchObject({ hold_reason: STORED });
  });
});

describe('storableMessage', () => {
  it('is well-formed, NUL-free, bounded and idempotent for any text, and leaves plain text alone', () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.string({ unit: 'binary', maxLength: 3000 }), fc.string({ unit: 'grapheme', maxLength: 300 })),
        fc.array(fc.constantFrom('\u0000', '\ud800', '\udfff', '\ud83d\ude00'), { maxLength: 5 }),
        fc.integer({ min: 2, max: 2500 }),
        (text, inserts, limit) => {
          const raw = inserts.reduce((s, piece, i) => s.slice(0, i * 7) + piece + s.slice(i * 7), text);
          const stored = storableMessage(raw, limit);
          expect(wellFormed(stored)).toBe(true);
          expect(stored).not.toContain('\u0000');
          expect(stored.length).toBeLessThanOrEqual(limit);
          expect(storableMessage(stored, limit)).toBe(stored);
          if (raw.length <= limit && wellFormed(raw) && !raw.includes('\u0000')) expect(stored).toBe(raw);
        },
      ),
      { numRuns: 300 },
    );
    expect(storableMessage('x'.repeat(5000))).toHaveLength(MESSAGE_LIMIT);
    // A pair cut at the limit is dropped whole, not split into a lone half.
    expect(storableMessage(`${'x'.repeat(8)}\ud83d\ude00y`, 10)).toBe(`${'x'.repeat(8)}…`);
  });
});
