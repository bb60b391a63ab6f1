/**
 * Verification (docs/verify.md): a work's check after its work, in the job's transaction; the
 * final sweep over every range before the migration may finish, fixing rows written after their
 * range ran; `bbm verify` on demand.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../src/bbm/metrics.ts';
import { finalizeMigration } from '../src/bbm/finalize.ts';
import { migrationReports } from '../src/bbm/status.ts';
import type { Job, JobKey, RunResult, Work } from '../src/bbm/types.ts';
import { verifyMigration } from '../src/bbm/verify.ts';
import { ErrorCode, MigrationStatus } from '../src/store/codes.ts';
import { copyColumn } from '../src/work/copy-column.ts';
import { bbm } from './support/cli.ts';
import { useTestDatabase } from './support/database.ts';
import { drain, enqueue, migrationRow, quiet, testWorker } from './support/engine.ts';
import { insertKeyMigration } from './support/keys.ts';

const db = useTestDatabase();

/** `users (id, email, email_lower)`: `rows` rows, email_lower not yet backfilled. */
async function createUsers(pool: pg.Pool, rows: number): Promise<void> {
  await pool.query(`CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, email_lower text)`);
  await pool.query(
    `INSERT INTO users (id, email) SELECT i, 'User' || i || '@Example.com' FROM generate_series(1, $1::int) i`,
    [rows],
  );
}

const unbackfilled = async (pool: pg.Pool, table = 'users'): Promise<number> =>
  (await pool.query(`SELECT count(*)::int AS n FROM ${table} WHERE email_lower IS DISTINCT FROM lower(email)`)).rows[0]
    .n;

/**
 * The backfill of email_lower, with its check; `also` runs before the update, in the job's
 * transaction, so the update and the check follow each other closely: a row the application
 * breaks between them would make the check fail, and the sweep's reruns could race it.
 */
function lowerEmails(name: string, also?: (job: Job<JobKey>) => Promise<void>): Work<JobKey> {
  return {
    name,
    async do(job) {
      await also?.(job);
      const { rowCount } = await job.query(
        `UPDATE ${job.table} SET email_lower = lower(email) WHERE (${job.range.sql}) AND email_lower IS DISTINCT FROM lower(email)`,
        job.range.params,
      );
      return rowCount ?? 0;
    },
    async verify(job) {
      const { rows } = await job.query<{ rows: number; example: string | null }>(
        `SELECT count(*)::int AS rows, min(${job.column})::text AS example FROM ${job.table}
         WHERE (${job.range.sql}) AND email_lower IS DISTINCT FROM lower(email)`,
        job.range.params,
      );
      return { rows: rows[0]!.rows, ...(rows[0]!.example !== null && { example: rows[0]!.example }) };
    },
  };
}

describe('the check after the work', () => {
  it('rolls back a range its work leaves unfinished, and fails the migration with verification_failed', async () => {
    const { pool } = db();
    await createUsers(pool, 100);
    // A bug: every seventh row is skipped.
    const buggy: Work = {
      ...lowerEmails('test.buggy'),
      async do(job) {
        await job.query('UPDATE users SET email_lower = lower(email) WHERE id BETWEEN $1 AND $2 AND id % 7 <> 0', [
          job.start,
          job.end,
        ]);
      },
    };
    await enqueue(pool, { name: 'buggy', work: buggy.name, table: 'users', batchSize: 20 });
    const results = await drain(testWorker(pool, { work: [buggy], maxAttempts: 2 }));

    const row = (await migrationRow(pool, 'buggy'))!;
    expect(row.status).toBe(MigrationStatus.failed);
    expect(row.failure_error_code).toBe(ErrorCode.verification_failed);
    expect(row.failure_message).toMatch(
      /^job \d+ \[1\.\.20\] failed 2 times; last error: verification failed: 2 rows of the range do not satisfy the check \(one: 7\)$/,
    );
    // Nothing of a range that failed its check was committed.
    expect(await unbackfilled(pool)).toBe(100);
    const failedAttempts = results.filter((r) => r.outcome === 'job_failed');
    expect(failedAttempts.length).toBeGreaterThanOrEqual(2);
    expect(failedAttempts.every((r) => r.errorCode === 'verification_failed')).toBe(true);
  });

  it('counts a check that answers something else than a count as the work’s failure', async () => {
    const { pool } = db();
    await createUsers(pool, 10);
    const odd: Work = { ...lowerEmails('test.odd'), verify: async () => -1 };
    await enqueue(pool, { name: 'odd', work: odd.name, table: 'users', batchSize: 20 });
    await drain(testWorker(pool, { work: [odd], maxAttempts: 1 }));
    const row = (await migrationRow(pool, 'odd'))!;
    expect(row.failure_error_code).toBe(ErrorCode.max_job_retry);
    expect(row.failure_message).toMatch(/the check of test\.odd answered -1, not a count of rows/);
  });
});

describe('the final sweep', () => {
  it('fixes rows the application wrote after their range ran, before the migration finishes', async () => {
    const { pool } = db();
    await createUsers(pool, 2_000);
    // Old application code keeps changing emails without email_lower, in a loop on its own
    // connection, while the backfill runs: rows of ranges already done go stale.
    let writing = true;
    let writes = 0;
    const application = (async () => {
      while (writing) {
        await pool.query(
          `UPDATE users SET email = 'Changed' || $1::int || '@Example.com' WHERE id = (1 + floor(random() * 2000))::bigint`,
          [writes],
        );
        writes += 1;
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
    const metrics = createMetrics();
    const work = lowerEmails('test.lower', async (job) => {
      // Slow enough that the application writes while the ranges run.
      await job.query('SELECT pg_sleep(0.01)');
    });
    await enqueue(pool, { name: 'lower', work: work.name, table: 'users', batchSize: 100 });
    const results: RunResult[] = [];
    const worker = testWorker(pool, { work: [work], observers: [metrics.observer, { run: (r) => results.push(r) }] });
    try {
      await worker.run({ untilDone: true });
    } finally {
      writing = false;
      await application;
    }
    expect(writes).toBeGreaterThan(20);
    // Rows the application changed while a range ran get its work once more in the attempt: none failed.
    expect(results.filter((r) => r.outcome === 'job_failed').map((r) => r.error?.message)).toEqual([]);
    // Each range was checked before the migration finished; what the application broke in ranges
    // already run was fixed by the sweep, or it wrote after the sweep had passed that range.
    const outcomes = results.map((r) => r.outcome);
    const verifiedRanges = results.reduce((sum, r) => sum + (r.verified?.ranges ?? 0), 0);
    expect(verifiedRanges).toBe(20);
    expect(outcomes.lastIndexOf('range_verified')).toBeLessThan(outcomes.indexOf('migration_finished'));
    const [report] = await migrationReports(pool, { name: 'lower' });
    expect(report!.status).toBe('finished');
    expect(report!.verification).toMatchObject({ rangesVerified: 20, verifiedAt: expect.any(Date) });
    const found = results.reduce((sum, r) => sum + (r.verified?.found ?? 0), 0);
    expect(report!.verification!.rowsFound).toBe(found);
    expect(found).toBeGreaterThan(0);
    const text = await metrics.registry.metrics();
    expect(text).toContain(`bbm_verify_rows_fixed_total{migration="lower"} ${found}`);
  });

  it('checks ranges that pass 16 at a time, and those of a span with failing rows one at a time', async () => {
    const { pool } = db();
    await createUsers(pool, 400);
    const other = new pg.Client({ connectionString: db().url });
    await other.connect();
    // During the last range, the application changes a row of range 191..200, the 20th of 40.
    const work = lowerEmails('test.spans', async (job) => {
      if (job.end === 400n) await other.query(`UPDATE users SET email = 'Changed@Example.com' WHERE id = 195`);
    });
    const results: RunResult[] = [];
    try {
      await enqueue(pool, { name: 'spans', work: work.name, table: 'users', batchSize: 10 });
      await drain(testWorker(pool, { work: [work], observers: [{ run: (r) => results.push(r) }] }));
    } finally {
      await other.end();
    }
    const verified = results.filter((r) => r.outcome === 'range_verified');
    // 1-16 at once; 17-32 found the row, then each alone (191..200 fixed); 33-40 at once.
    expect(verified.map((r) => r.verified)).toEqual([
      { found: 0, ranges: 16 },
      ...Array.from({ length: 16 }, (_, i) => ({ found: i === 3 ? 1 : 0, ranges: 1 })),
      { found: 0, ranges: 8 },
    ]);
    expect(verified[4]!.job).toMatchObject({ start: 191n, end: 200n });
    const [report] = await migrationReports(pool, { name: 'spans' });
    expect(report!.verification).toMatchObject({ rangesVerified: 40, rowsFound: 1, rangesRerun: 1 });
    expect(await unbackfilled(pool)).toBe(0);
  });

  it('checks one range at a time after a check of many timed out', async () => {
    const { pool } = db();
    await createUsers(pool, 400);
    const checked = lowerEmails('test.slow_check');
    // A check that takes 1 ms a row: 10 ms a range, 160 ms for 16 of them, past the run's 100 ms.
    const work: Work<JobKey> = {
      ...checked,
      async verify(job) {
        const size = Number(BigInt(job.end as bigint) - BigInt(job.start as bigint) + 1n);
        await job.query('SELECT pg_sleep($1)', [size / 1000]);
        return checked.verify!(job);
      },
    };
    await enqueue(pool, { name: 'slow_check', work: work.name, table: 'users', batchSize: 10 });
    const worker = testWorker(pool, { work: [work], runTimeoutMs: 100, maxRunErrors: 2, runErrorHoldMs: 20 });
    const results: RunResult[] = [];
    // Run by run, through the run error's hold (20 ms), until the migration finishes.
    for (let i = 0; i < 500 && (await migrationRow(pool, 'slow_check'))!.status !== MigrationStatus.finished; i += 1) {
      const result = await worker.runOnce();
      results.push(result);
      if (result.outcome === 'no_job') await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect((await migrationRow(pool, 'slow_check'))!.status).toBe(MigrationStatus.finished);
    const errors = results.filter((r) => r.outcome === 'error').map((r) => r.error?.message);
    // One run error; the next runs, and the rest of the sweep, check one range at a time.
    expect(errors).toEqual([expect.stringMatching(/^the final sweep of jobs 1-16 \[1\.\.160\] failed: job timed out/)]);
    expect(results.filter((r) => r.outcome === 'range_verified').map((r) => r.verified!.ranges)).toEqual(
      Array.from({ length: 40 }, () => 1),
    );
  });

  it('covers rows written between two ranges of a text key and before the first, and finalize runs it', async () => {
    const { pool } = db();
    await pool.query(`CREATE TABLE tags (k text PRIMARY KEY, email text NOT NULL, email_lower text)`);
    await pool.query(
      `INSERT INTO tags (k, email) SELECT 'k' || lpad(i::text, 5, '0'), 'Tag' || i || '@Example.com' FROM generate_series(1, 100) i`,
    );
    const other = new pg.Client({ connectionString: db().url });
    await other.connect();
    // During the last range, the application inserts a row just after the first range's last key
    // (in no range: the next one started at the first key after it) and breaks a row of it.
    const work = lowerEmails('test.tags', async (job) => {
      if (job.end !== 'k00100') return;
      await other.query(
        `INSERT INTO tags (k, email)
         SELECT (max_key->>0) || 'x', 'Late@Example.com' FROM batched_background_migration_jobs ORDER BY max_value LIMIT 1`,
      );
      await other.query(`UPDATE tags SET email = 'Broken@Example.com' WHERE k = 'k00003'`);
      // And one between the migration's first key and the first row.
      await other.query(`INSERT INTO tags (k, email) VALUES ('k00000x', 'Early@Example.com')`);
    });
    try {
      await insertKeyMigration(
        pool,
        { name: 'tags', work: work.name, table: 'tags', column: 'k', batchSize: 10, lanes: 1 },
        { min_key: '"k00000"' },
      );
      const report = await finalizeMigration({ pool, work: [work], name: 'tags', logger: quiet });
      expect(report.status).toBe('finished');
      expect(await unbackfilled(pool, 'tags')).toBe(0);
      expect(report.verification).toMatchObject({ rangesVerified: 10, rowsFound: 3, rangesRerun: 2 });
      expect((await pool.query(`SELECT email_lower FROM tags WHERE k = 'k00010x'`)).rows).toEqual([
        { email_lower: 'late@example.com' },
      ]);
    } finally {
      await other.end();
    }
  });

  it('fails the migration when running the work again does not fix a range, and bbm retry resumes the sweep', async () => {
    const { pool } = db();
    await createUsers(pool, 50);
    await pool.query('ALTER TABLE users ADD COLUMN stuck boolean NOT NULL DEFAULT false');
    const other = new pg.Client({ connectionString: db().url });
    await other.connect();
    const metrics = createMetrics();
    // A row the work cannot fix (it skips stuck rows), written into the first range meanwhile.
    const work: Work = {
      ...lowerEmails('test.stuck'),
      async do(job) {
        await job.query('UPDATE users SET email_lower = lower(email) WHERE id BETWEEN $1 AND $2 AND NOT stuck', [
          job.start,
          job.end,
        ]);
        if (job.end === 50n)
          await other.query(`UPDATE users SET email = 'Stuck@Example.com', stuck = true WHERE id = 5`);
      },
    };
    try {
      await enqueue(pool, { name: 'stuck', work: work.name, table: 'users', batchSize: 10 });
      await drain(testWorker(pool, { work: [work], observers: [metrics.observer] }));
    } finally {
      await other.end();
    }
    const row = (await migrationRow(pool, 'stuck'))!;
    expect(row.status).toBe(MigrationStatus.failed);
    expect(row.failure_error_code).toBe(ErrorCode.verification_failed);
    expect(row.failure_message).toMatch(
      /^the final sweep ran the work on job \d+ \[1\.\.10\] 3 times more and 1 row of the range does not satisfy the check \(one: 5\)$/,
    );
    const [failed] = await migrationReports(pool, { name: 'stuck' });
    expect(failed!.verification).toBeNull();
    // The range that failed the migration is the one check that failed: no attempt failed its check.
    expect(await metrics.registry.metrics()).toContain('bbm_verify_failures_total{migration="stuck"} 1');

    // The operator fixes the row, and retries: the sweep goes on from where it stopped.
    await pool.query('UPDATE users SET stuck = false WHERE id = 5');
    expect((await bbm(['retry', '--name', 'stuck'], { DATABASE_URL: db().url })).code).toBe(0);
    await drain(testWorker(pool, { work: [work] }));
    const [report] = await migrationReports(pool, { name: 'stuck' });
    expect(report!.status).toBe('finished');
    expect(report!.verification).toMatchObject({ rangesVerified: 5, rowsFound: 1, rangesRerun: 1 });
    expect(await unbackfilled(pool)).toBe(0);
  });

  it('holds a migration whose check throws in the sweep, fails it with run_error, and resumes on retry', async () => {
    const { pool, url } = db();
    await createUsers(pool, 30);
    let sweeping = false;
    let broken = true;
    const checked = lowerEmails('test.sweep_throws');
    const work: Work<JobKey> = {
      name: checked.name,
      do: (job) => checked.do(job),
      async verify(job) {
        if (sweeping && broken) throw new Error('the check cannot run');
        return checked.verify!(job);
      },
    };
    // The sweep begins once the last range has committed.
    const lastRange = {
      run: (r: RunResult) => void (r.outcome === 'job_succeeded' && r.job?.end === 30n && (sweeping = true)),
    };
    await enqueue(pool, { name: 'throws', work: work.name, table: 'users', batchSize: 10 });
    await testWorker(pool, { work: [work], maxRunErrors: 2, runErrorHoldMs: 20, observers: [lastRange] }).run({
      untilDone: true,
    });
    const row = (await migrationRow(pool, 'throws'))!;
    expect(row.status).toBe(MigrationStatus.failed);
    expect(row.failure_error_code).toBe(ErrorCode.run_error);
    expect(row.failure_message).toMatch(
      /^2 runs in a row failed; last error: run error: the final sweep of jobs? [\d-]+ \[\d+\.\.\d+\] failed: the check cannot run$/,
    );

    broken = false;
    expect((await bbm(['retry', '--name', 'throws'], { DATABASE_URL: url })).code).toBe(0);
    await drain(testWorker(pool, { work: [work] }));
    const [report] = await migrationReports(pool, { name: 'throws' });
    expect(report!.status).toBe('finished');
    expect(report!.verification).toMatchObject({ rangesVerified: 3, rowsFound: 0 });
  });

  it('leaves a work without a check to finish as before', async () => {
    const { pool } = db();
    await createUsers(pool, 30);
    const checked = lowerEmails('test.unchecked');
    const unchecked: Work<JobKey> = { name: checked.name, do: (job) => checked.do(job) };
    await enqueue(pool, { name: 'unchecked', work: unchecked.name, table: 'users', batchSize: 10 });
    const results = await drain(testWorker(pool, { work: [unchecked] }));
    expect(results.some((r) => r.outcome === 'range_verified')).toBe(false);
    const [report] = await migrationReports(pool, { name: 'unchecked' });
    expect(report!.status).toBe('finished');
    expect(report!.verification).toBeNull();
  });
});

describe('bbm verify', () => {
  it('checks a finished copyColumn migration read-only, and exits 1 naming rows broken since', async () => {
    const { pool, url } = db();
    await pool.query(`CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), a int NOT NULL, b bigint)`);
    await pool.query(`INSERT INTO u (a) SELECT i FROM generate_series(1, 300) i`);
    const copy = copyColumn({ name: 'test.copy_a', from: 'a', to: 'b' });
    await insertKeyMigration(pool, {
      name: 'copy',
      work: copy.name,
      table: 'u',
      column: 'id',
      batchSize: 50,
      lanes: 1,
    });
    await drain(testWorker(pool, { work: [copy] }));
    expect((await migrationRow(pool, 'copy'))!.status).toBe(MigrationStatus.finished);

    const clean = await verifyMigration({ pool, work: [copy], name: 'copy', logger: quiet });
    expect(clean).toMatchObject({ rangesChecked: 6, rangesFailing: 0, rows: 0, failing: [] });

    // Two rows inside ranges: a range is checked from the previous range's end, so a row that is
    // a range's last key is checked, and counted, by the next range too.
    const { rows: broken } = await pool.query<{ id: string }>(
      `UPDATE u SET b = NULL WHERE id IN (
         SELECT id FROM u WHERE NOT EXISTS (SELECT 1 FROM batched_background_migration_jobs j WHERE j.max_key->>0 = u.id::text)
         ORDER BY a LIMIT 2)
       RETURNING id::text`,
    );
    expect(broken).toHaveLength(2);
    const xmins = await pool.query('SELECT id, xmin::text FROM u ORDER BY id');
    const found = await bbm(['verify', '--name', 'copy', '--config', 'test/fixtures/verify.config.ts'], {
      DATABASE_URL: url,
    });
    expect(found.code).toBe(1);
    expect(found.out).toMatch(/^copy: 6 ranges checked in [\d.]+ s; 2 rows in [12] ranges fail the check:$/m);
    const named = broken.map((r) => r.id).filter((id) => found.out.includes(id));
    expect(named.length).toBeGreaterThanOrEqual(1);
    // Read-only: nothing changed, not even a row version.
    expect((await pool.query('SELECT id, xmin::text FROM u ORDER BY id')).rows).toEqual(xmins.rows);

    const json = await bbm(['verify', '--name', 'copy', '--json', '--config', 'test/fixtures/verify.config.ts'], {
      DATABASE_URL: url,
    });
    expect(json.code).toBe(1);
    expect(JSON.parse(json.out)).toMatchObject({ name: 'copy', rangesChecked: 6, rows: 2 });

    const missing = await bbm(['verify', '--name', 'nope', '--config', 'test/fixtures/verify.config.ts'], {
      DATABASE_URL: url,
    });
    expect(missing.code).not.toBe(0);
    expect(missing.err).toMatch(/no migration named "nope"/);
  });
});
