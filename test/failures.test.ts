import { describe, expect, it, onTestFinished } from 'vitest';
import type pg from 'pg';
import { createPool, exec } from '../src/store/db.ts';
import { sql } from 'drizzle-orm';
import type { RunResult, Work } from '../src/bbm/types.ts';
import { migrationReports } from '../src/bbm/status.ts';
import { waitFor } from './support/processes.ts';
import { ErrorCode, MigrationStatus, JobStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import {
  createItems,
  drain,
  enqueue,
  expectEveryRowOnce,
  jobRanges,
  migrationRow,
  nextJob,
  range,
  testWorker,
  touch,
} from './support/engine.ts';

/** From now on, ranges of the migration starting after `after` are refused (a trigger on the jobs table raises). */
async function refuseRanges(pool: pg.Pool, migrationId: bigint, after = 0): Promise<void> {
  await pool.query(`CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN IF NEW.batched_background_migration_id = ${migrationId} AND NEW.min_value > ${after} THEN
      RAISE EXCEPTION 'ranges refused'; END IF; RETURN NEW; END $$`);
  await pool.query(
    'CREATE OR REPLACE TRIGGER refuse BEFORE INSERT ON batched_background_migration_jobs FOR EACH ROW EXECUTE FUNCTION refuse()',
  );
}

/** The ranges of 10 up to `through` done, their rows touched once, nothing else cut and nothing else touched. */
async function expectOnlyRangesDone(pool: pg.Pool, through: number): Promise<void> {
  const expected = range(1, through / 10).map((i) => [i * 10 - 9, i * 10, JobStatus.finished]);
  expect((await jobRanges(pool, 'cut_fails', { all: true })).map((j) => [j.min, j.max, j.status])).toEqual(expected);
  const { rows } = await pool.query(
    'SELECT count(*) FILTER (WHERE touched = 1)::int AS done, count(*) FILTER (WHERE touched > 1)::int AS twice FROM items',
  );
  expect(rows[0]).toEqual({ done: through, twice: 0 });
}

describe('bad migration rows', () => {
  const db = useTestDatabase();

  /** Each error code the engine records, reached by a real bad row (or a failing job for `unknown`). */
  const cases: Record<
    keyof typeof ErrorCode,
    { setup?: string; row: Partial<Parameters<typeof enqueue>[1]>; message: RegExp; work?: Work }
  > = {
    unknown: {
      row: {},
      message: /boom/,
      work: {
        name: 'test.boom',
        do: async () => {
          throw new Error('boom');
        },
      },
    },
    invalid_table: { row: { table: 'no_such_table' }, message: /"no_such_table" does not exist/ },
    invalid_column: { row: { column: 'nope' }, message: /column "nope" does not exist in public.items/ },
    invalid_job_signature: { row: { work: 'test.touch ' }, message: /can never name a work function/ },
    max_job_retry: {
      row: {},
      message: /failed 2 times; last error: boom/,
      work: {
        name: 'test.boom',
        do: async () => {
          throw new Error('boom');
        },
      },
    },
    // A work whose check finds a row it left: every attempt is rolled back, the last fails the migration.
    verification_failed: {
      row: {},
      message: /failed 2 times; last error: verification failed: 1 row of the range does not satisfy the check/,
      work: {
        name: 'test.leaves_one',
        do: async () => {},
        verify: async () => 1,
      },
    },
    invalid_batching_strategy: {
      row: { batchingStrategy: 'nullable_column' },
      message: /"nullable_column" is not supported/,
    },
    // A fault the engine does not foresee: every range it cuts is refused.
    run_error: {
      setup: `CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'ranges refused'; END $$;
              CREATE TRIGGER refuse BEFORE INSERT ON batched_background_migration_jobs FOR EACH ROW EXECUTE FUNCTION refuse()`,
      row: {},
      message: /^2 runs in a row failed; last error: run error: ranges refused/,
    },
  };

  for (const [codeName, scenario] of Object.entries(cases)) {
    it(`records ${codeName} (${ErrorCode[codeName as keyof typeof ErrorCode]})`, async () => {
      const { pool } = db();
      await createItems(pool, 'items', range(1, 3));
      const work = scenario.work ?? touch;
      await enqueue(pool, { name: 'bad', work: work.name, table: 'items', batchSize: 10, ...scenario.row });
      if (scenario.setup) await pool.query(scenario.setup);

      const worker = testWorker(pool, {
        work: [touch, ...(scenario.work ? [scenario.work] : [])],
        maxAttempts: 2,
        maxRunErrors: 2,
        runErrorHoldMs: 20,
      });
      // Run errors are the worker's to sit out, not the test's: run it until nothing is left.
      if (codeName === 'run_error') await worker.run({ untilDone: true });
      else await drain(worker);

      const code = ErrorCode[codeName as keyof typeof ErrorCode];
      if (codeName === 'unknown') {
        // A job's own failure is recorded on the job with code unknown (0).
        const { rows } = await pool.query(
          'SELECT failure_error_code, failure_message FROM batched_background_migration_jobs',
        );
        expect(rows).toEqual([{ failure_error_code: code, failure_message: expect.stringMatching(scenario.message) }]);
      } else {
        const row = await migrationRow(pool, 'bad');
        expect(row?.status).toBe(MigrationStatus.failed);
        expect(row?.failure_error_code).toBe(code);
        expect(row?.failure_message).toMatch(scenario.message);
      }
    });
  }

  it.each([
    [
      'a view',
      'CREATE VIEW items_view AS SELECT * FROM items',
      { table: 'items_view' },
      1,
      /public.items_view is a view, not a table/,
    ],
    [
      'a float column',
      'ALTER TABLE items ADD COLUMN ratio float8 NOT NULL DEFAULT random() UNIQUE',
      { column: 'ratio' },
      2,
      /is double precision; a key's columns may be smallint, integer, bigint, numeric, uuid, text/,
    ],
    [
      'a text column that may hold NULL',
      'ALTER TABLE items ADD COLUMN label text UNIQUE',
      { column: 'label' },
      2,
      /items\.label may hold NULL, and rows with a NULL key would never be in a range/,
    ],
    [
      'a text column whose index is in another collation',
      `ALTER TABLE items ADD COLUMN label text COLLATE "C" NOT NULL DEFAULT 'x'; CREATE INDEX ON items (label COLLATE "und-x-icu")`,
      { column: 'label' },
      2,
      /has no valid, non-partial btree index leading with it \(in the columns' own collations/,
    ],
    [
      'a composite key whose columns lead no index in that order',
      'ALTER TABLE items ADD COLUMN tenant int NOT NULL DEFAULT 1; CREATE INDEX ON items (id, tenant)',
      { column: 'tenant,id' },
      2,
      /key \(tenant, id\) of public\.items has no valid, non-partial btree index whose leading columns are these, in this order/,
    ],
    [
      'a text column indexed only with text_pattern_ops (not its default ordering)',
      `ALTER TABLE items ADD COLUMN label text NOT NULL DEFAULT 'x'; CREATE INDEX ON items (label text_pattern_ops)`,
      { column: 'label' },
      2,
      /items\.label has no valid, non-partial btree index leading with it \(in the columns' own collations, with their default ordering/,
    ],
    [
      'a uuid column with only a hash index',
      'ALTER TABLE items ADD COLUMN ref uuid NOT NULL DEFAULT gen_random_uuid(); CREATE INDEX ON items USING hash (ref)',
      { column: 'ref' },
      2,
      /items\.ref has no valid, non-partial btree index leading with it/,
    ],
    [
      'a composite key whose second column may hold NULL',
      'ALTER TABLE items ADD COLUMN ref uuid; CREATE UNIQUE INDEX ON items (id, ref)',
      { column: 'id,ref' },
      2,
      /items\.ref may hold NULL, and rows with a NULL key would never be in a range/,
    ],
    [
      'a composite key whose index orders its columns in mixed directions',
      'ALTER TABLE items ADD COLUMN tenant int NOT NULL DEFAULT 1; CREATE INDEX ON items (tenant, id DESC)',
      { column: 'tenant,id' },
      2,
      /all ascending or all descending NULLS FIRST\); batching it would scan the table/,
    ],
    [
      'a citext column whose operators are off the search_path',
      `CREATE SCHEMA ext; CREATE EXTENSION citext SCHEMA ext; ALTER TABLE items ADD COLUMN name ext.citext NOT NULL DEFAULT 'x'; CREATE INDEX ON items (name)`,
      { column: 'name' },
      2,
      /items\.name is ext\.citext, whose operators are not on the search_path/,
    ],
    ['a key naming a column twice', 'SELECT 1', { column: 'id, id' }, 2, /names a column twice/],
    ['an unindexed column', 'SELECT 1', { column: 'v' }, 2, /has no valid, non-partial btree index/],
    [
      'a partially indexed column',
      'CREATE UNIQUE INDEX ON items (v) WHERE v > 1',
      { column: 'v' },
      2,
      /no valid, non-partial btree/,
    ],
    ['a column with a differently cased name', 'SELECT 1', { column: 'ID' }, 2, /column "ID" does not exist/],
    ['too many dotted names', 'SELECT 1', { table: 'a.b.c.d' }, 1, /too many dotted names/],
  ])('fails a migration over %s', async (_, setup, row, code, message) => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 3));
    await pool.query(setup);
    await enqueue(pool, { name: 'bad', work: touch.name, table: 'items', batchSize: 10, ...row });

    await drain(testWorker(pool, { work: [touch] }));

    const failed = await migrationRow(pool, 'bad');
    expect(failed).toMatchObject({ status: MigrationStatus.failed, failure_error_code: code });
    expect(failed?.failure_message).toMatch(message);
  });

  it('treats an injected table name as a name: invalid_table, nothing dropped', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 3));
    await pool.query('CREATE TABLE x (id int)');
    await enqueue(pool, { name: 'evil', work: touch.name, table: 'items; drop table x', batchSize: 10 });
    await enqueue(pool, {
      name: 'evil_column',
      work: touch.name,
      table: 'items',
      column: 'id; drop table x',
      batchSize: 10,
    });

    await drain(testWorker(pool, { work: [touch] }));

    expect(await migrationRow(pool, 'evil')).toMatchObject({
      status: MigrationStatus.failed,
      failure_error_code: ErrorCode.invalid_table,
    });
    expect(await migrationRow(pool, 'evil_column')).toMatchObject({
      status: MigrationStatus.failed,
      failure_error_code: ErrorCode.invalid_column,
    });
    const { rows } = await pool.query(`SELECT to_regclass('x') IS NOT NULL AS present`);
    expect(rows[0].present).toBe(true);
  });

  it.each([
    ['batch_size <= 0', { batchSize: 0 }, 'batched_background_migrations_batch_size_positive'],
    ['max_value < min_value', { min: 10, max: 5 }, 'batched_background_migrations_max_value_not_below_min'],
    ['an empty name', { name: '  ' }, 'batched_background_migrations_name_not_empty'],
    ['an empty table', { table: '' }, 'batched_background_migrations_table_name_not_empty'],
    ['an empty column', { column: '' }, 'batched_background_migrations_column_name_not_empty'],
    ['an empty work name', { work: '' }, 'batched_background_migrations_job_signature_name_not_empty'],
    ['an unknown status', { status: 7 }, 'batched_background_migrations_status_known'],
  ])('refuses a row with %s at the door', async (_, row, constraint) => {
    const { pool } = db();
    await expect(
      enqueue(pool, { name: 'bad', work: touch.name, table: 'items', batchSize: 10, ...row }),
    ).rejects.toMatchObject({
      code: '23514',
      constraint,
    });
  });
});

describe('failing jobs', () => {
  const db = useTestDatabase();

  it('runs every new range once before retrying failed ones, then succeeds on retry', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 9));
    const seen: string[] = [];
    const flaky: Work = {
      name: 'test.flaky',
      async do(job) {
        seen.push(`${job.start}-${job.end}#${job.attempt}`);
        await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE id BETWEEN $1 AND $2`, [
          job.start,
          job.end,
        ]);
        if (job.start === 4n && job.attempt < 3) throw new Error(`flake ${job.attempt}`);
      },
    };
    await enqueue(pool, { name: 'flaky', work: flaky.name, table: 'items', batchSize: 3 });

    await drain(testWorker(pool, { work: [flaky], maxAttempts: 3 }));

    expect(seen).toEqual(['1-3#1', '4-6#1', '7-9#1', '4-6#2', '4-6#3']);
    expect(await jobRanges(pool, 'flaky')).toEqual([
      { min: 1, max: 3, status: JobStatus.finished, attempts: 1 },
      { min: 4, max: 6, status: JobStatus.finished, attempts: 3 },
      { min: 7, max: 9, status: JobStatus.finished, attempts: 1 },
    ]);
    // The failed attempts' writes were rolled back: every row was touched exactly once.
    const { rows } = await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM items');
    expect(rows[0].t).toEqual([1]);
    expect((await migrationRow(pool, 'flaky'))?.status).toBe(MigrationStatus.finished);
  });

  it('fails the migration with max_job_retry when a range exhausts its attempts, keeping the other ranges', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 6));
    let calls = 0;
    const poisoned: Work = {
      name: 'test.poisoned',
      async do(job) {
        calls += 1;
        await job.query('UPDATE items SET touched = touched + 1 WHERE id BETWEEN $1 AND $2', [job.start, job.end]);
        if (job.start <= 2n && 2n <= job.end) throw new Error('row 2 is poisoned');
      },
    };
    await enqueue(pool, { name: 'poisoned', work: poisoned.name, table: 'items', batchSize: 2 });

    await drain(testWorker(pool, { work: [poisoned], maxAttempts: 4 }));

    expect(calls).toBe(4 + 2);
    const row = await migrationRow(pool, 'poisoned');
    expect(row).toMatchObject({ status: MigrationStatus.failed, failure_error_code: ErrorCode.max_job_retry });
    expect(row?.failure_message).toMatch(/\[1\.\.2\] failed 4 times; last error: row 2 is poisoned/);
    expect(await jobRanges(pool, 'poisoned')).toEqual([
      { min: 1, max: 2, status: JobStatus.failed, attempts: 4 },
      { min: 3, max: 4, status: JobStatus.finished, attempts: 1 },
      { min: 5, max: 6, status: JobStatus.finished, attempts: 1 },
    ]);
    const { rows } = await pool.query('SELECT id::int, touched FROM items ORDER BY id');
    expect(rows.map((r) => r.touched)).toEqual([0, 0, 1, 1, 1, 1]);
  });

  it('rolls back the writes of a work function that throws, and records the attempt and error', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 4));
    const halfway: Work = {
      name: 'test.halfway',
      async do(job) {
        await job.query('UPDATE items SET v = -1 WHERE id BETWEEN $1 AND $2', [job.start, job.end]);
        await job.query('INSERT INTO items (id) VALUES (1000)');
        throw new TypeError('half done');
      },
    };
    await enqueue(pool, { name: 'halfway', work: halfway.name, table: 'items', batchSize: 10 });

    const result = await nextJob(testWorker(pool, { work: [halfway] }));

    expect(result.outcome).toBe('job_failed');
    expect(result.error?.message).toBe('half done');
    const { rows } = await pool.query('SELECT count(*)::int AS changed FROM items WHERE v = -1 OR id = 1000');
    expect(rows[0].changed).toBe(0);
    const jobs = await pool.query(
      'SELECT status, attempts, failure_error_code, failure_message FROM batched_background_migration_jobs',
    );
    expect(jobs.rows).toEqual([
      { status: JobStatus.failed, attempts: 1, failure_error_code: ErrorCode.unknown, failure_message: 'half done' },
    ]);
  });

  it('fails a job whose work function swallowed a failed statement, instead of committing half of it', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 4));
    const swallow: Work = {
      name: 'test.swallow',
      async do(job) {
        await job.query('UPDATE items SET v = -1 WHERE id BETWEEN $1 AND $2', [job.start, job.end]);
        await job.query('SELECT 1/0').catch(() => {});
      },
    };
    await enqueue(pool, { name: 'swallow', work: swallow.name, table: 'items', batchSize: 10 });

    const result = await nextJob(testWorker(pool, { work: [swallow] }));

    expect(result.outcome).toBe('job_failed');
    expect(result.error?.message).toMatch(/swallowed/);
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM items WHERE v = -1');
    expect(rows[0].n).toBe(0);
  });

  it('refuses transaction control from a work function; savepoints through job.db work', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 4));
    const errors: string[] = [];
    const meddler: Work = {
      name: 'test.meddler',
      async do(job) {
        for (const statement of ['COMMIT', 'rollback', ' begin', 'END', 'START TRANSACTION']) {
          await job.query(statement).catch((e: Error) => errors.push(e.message));
        }
        await job.db.execute(sql`UPDATE items SET v = 7 WHERE id BETWEEN ${job.start}::bigint AND ${job.end}::bigint`);
        // A nested transaction is a savepoint: its rollback undoes only its own writes.
        await job.db
          .transaction(async (tx) => {
            await tx.execute(sql`UPDATE items SET v = 8`);
            tx.rollback();
          })
          .catch(() => {});
      },
    };
    await enqueue(pool, { name: 'meddler', work: meddler.name, table: 'items', batchSize: 10 });

    const result = await nextJob(testWorker(pool, { work: [meddler] }));

    expect(result.outcome).toBe('job_succeeded');
    expect(errors).toHaveLength(5);
    expect(errors[0]).toMatch(/cannot end or restart the job transaction/);
    const { rows } = await pool.query('SELECT array_agg(DISTINCT v) AS v FROM items');
    expect(rows[0].v).toEqual([7]);
  });

  it('cancels a job past the run timeout and counts it as a failed attempt, even on a one-connection pool', async () => {
    const { pool: shared, url } = db();
    // The worker's pool has no room for a second connection: the cancel must not need one.
    const pool = createPool({ connectionString: url, max: 1 });
    onTestFinished(() => pool.end());
    await createItems(pool, 'items', range(1, 4));
    const slow: Work = {
      name: 'test.slow',
      async do(job) {
        await job.query('UPDATE items SET v = -1');
        await job.query('SELECT pg_sleep(30)');
      },
    };
    await enqueue(pool, { name: 'slow', work: slow.name, table: 'items', batchSize: 10 });
    // Too small to split (a timed-out range is split in halves of at least min_batch_size rows).
    await pool.query(`UPDATE batched_background_migrations SET min_batch_size = 10`);

    const started = Date.now();
    const result = await nextJob(testWorker(pool, { work: [slow], runTimeoutMs: 300 }));

    expect(result.outcome).toBe('job_failed');
    expect(result.error?.message).toMatch(/timed out/);
    expect(Date.now() - started).toBeLessThan(10_000);
    const jobs = await shared.query('SELECT status, attempts, failure_message FROM batched_background_migration_jobs');
    expect(jobs.rows).toEqual([
      { status: JobStatus.failed, attempts: 1, failure_message: expect.stringMatching(/timed out/) },
    ]);
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM items WHERE v = -1');
    expect(rows[0].n).toBe(0);
  });

  it('times out a work function stuck outside SQL, and fences it off the connection afterwards', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 4));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let lateError: Error | undefined;
    const stuck: Work = {
      name: 'test.stuck',
      async do(job) {
        await gate;
        await job.query('UPDATE items SET v = -1').catch((e: Error) => (lateError = e));
      },
    };
    await enqueue(pool, { name: 'stuck', work: stuck.name, table: 'items', batchSize: 10 });

    const result = await nextJob(testWorker(pool, { work: [stuck], runTimeoutMs: 200 }));
    release();
    await new Promise((resolve) => setTimeout(resolve, 50));

    expect(result.outcome).toBe('job_failed');
    expect(lateError?.message).toMatch(/this job is over/);
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM items WHERE v = -1');
    expect(rows[0].n).toBe(0);
  });

  it("aborts the job's signal at the run timeout and on a hard stop, whenever the work first reads it", async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 4));
    const seen: Array<{ early: boolean; aborted: boolean; reason: string }> = [];
    let attempts = 0;
    let late!: () => void;
    const lateRead = new Promise<void>((resolve) => (late = resolve));
    const waiting: Work = {
      name: 'test.waiting',
      async do(job) {
        attempts += 1;
        // The first attempt reads the signal before it aborts, the second only after.
        const early = attempts === 1;
        if (!early) await lateRead;
        const { signal } = job;
        if (!signal.aborted) await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
        seen.push({ early, aborted: signal.aborted, reason: String((signal.reason as Error).message) });
        throw signal.reason;
      },
    };
    await enqueue(pool, { name: 'waiting', work: waiting.name, table: 'items', batchSize: 10 });
    await pool.query(`UPDATE batched_background_migrations SET min_batch_size = 10`);
    const worker = testWorker(pool, { work: [waiting], runTimeoutMs: 200 });

    expect((await nextJob(worker)).outcome).toBe('job_failed');
    const second = worker.runOnce();
    await new Promise((resolve) => setTimeout(resolve, 400));
    late();
    expect((await second).outcome).toBe('job_failed');
    expect(seen).toEqual([
      { early: true, aborted: true, reason: expect.stringMatching(/timed out/) },
      { early: false, aborted: true, reason: expect.stringMatching(/timed out/) },
    ]);

    // A hard stop aborts it too, and the run is rolled back.
    const stopping = testWorker(pool, { work: [waiting], runTimeoutMs: 60_000 });
    const run = stopping.run();
    await waitFor(async () => attempts === 3, 'the third attempt');
    await stopping.stop({ abort: true });
    await run;
    expect(seen[2]).toEqual({ early: false, aborted: true, reason: expect.stringMatching(/worker stopped/) });
    const jobs = await pool.query('SELECT status, attempts FROM batched_background_migration_jobs');
    expect(jobs.rows).toEqual([{ status: JobStatus.failed, attempts: 2 }]);
  });

  it('survives a lost connection mid-job: the run rolls back and the range runs again', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 6));
    let killed = false;
    const fragile: Work = {
      name: 'test.fragile',
      async do(job) {
        await job.query('UPDATE items SET touched = touched + 1 WHERE id BETWEEN $1 AND $2', [job.start, job.end]);
        if (!killed && job.start === 3n) {
          killed = true;
          // The server side of this connection goes away, as in a failover or network cut.
          // This test's database only: test files run in parallel, and their jobs run the same statement.
          await pool.query(
            'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE $1 AND datname = current_database()',
            ['%touched = touched + 1%'],
          );
          await job.query('SELECT 1');
        }
      },
    };
    await enqueue(pool, { name: 'fragile', work: fragile.name, table: 'items', batchSize: 2 });

    const results = [];
    const worker = testWorker(pool, { work: [fragile] });
    for (let i = 0; i < 10; i += 1) {
      const result = await worker.runOnce();
      results.push(result.outcome);
      if (result.outcome === 'no_job') break;
    }

    expect(results).toContain('error');
    expect(results.at(-1)).toBe('no_job');
    const { rows } = await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM items');
    expect(rows[0].t).toEqual([1]);
    expect((await jobRanges(pool, 'fragile')).map((r) => [r.min, r.max, r.attempts])).toEqual([
      [1, 2, 1],
      [3, 4, 1],
      [5, 6, 1],
    ]);
  });

  it('fails the job, not the run, when the work breaks a deferred constraint (checked before commit)', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 4));
    await pool.query('CREATE TABLE parents (id int PRIMARY KEY)');
    await pool.query('CREATE TABLE children (parent_id int REFERENCES parents DEFERRABLE INITIALLY DEFERRED)');
    const orphaning: Work = {
      name: 'test.orphaning',
      async do(job) {
        await job.query('UPDATE items SET v = -1 WHERE id BETWEEN $1 AND $2', [job.start, job.end]);
        await job.query('INSERT INTO children VALUES (42)');
      },
    };
    await enqueue(pool, { name: 'orphaning', work: orphaning.name, table: 'items', batchSize: 10 });

    const result = await nextJob(testWorker(pool, { work: [orphaning] }));

    expect(result.outcome).toBe('job_failed');
    expect(result.error?.message).toMatch(/violates foreign key constraint/);
    const { rows } = await pool.query(
      'SELECT (SELECT count(*)::int FROM items WHERE v = -1) AS changed, (SELECT count(*)::int FROM children) AS children',
    );
    expect(rows[0]).toEqual({ changed: 0, children: 0 });
    expect(await jobRanges(pool, 'orphaning')).toEqual([{ min: 1, max: 4, status: JobStatus.failed, attempts: 1 }]);
  });

  it('keeps exactly-once under the running loop (chained runs) with failures and retries mixed in', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 200));
    const failures = new Map<bigint, number>();
    const sometimes: Work = {
      name: 'test.sometimes',
      async do(job) {
        await job.query('UPDATE items SET touched = touched + 1 WHERE id BETWEEN $1 AND $2', [job.start, job.end]);
        const failed = failures.get(job.start) ?? 0;
        // Every third range fails twice before it succeeds.
        if ((job.start / 7n) % 3n === 0n && failed < 2) {
          failures.set(job.start, failed + 1);
          throw new Error('not yet');
        }
      },
    };
    await enqueue(pool, { name: 'sometimes', work: sometimes.name, table: 'items', batchSize: 7 });

    await testWorker(pool, { work: [sometimes], intervalMs: 1, maxIntervalMs: 2 }).run({ untilDone: true });

    expect((await migrationRow(pool, 'sometimes'))?.status).toBe(MigrationStatus.finished);
    const { rows } = await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM items');
    expect(rows[0].t).toEqual([1]);
    const jobs = await jobRanges(pool, 'sometimes');
    expect(jobs.filter((j) => j.attempts === 3).length).toBe([...failures.values()].filter((n) => n === 2).length);
    expect(jobs.filter((j) => j.attempts === 3).length).toBeGreaterThan(5);
  });
});

describe('a migration whose work function the worker lacks (a rolling deploy)', () => {
  const db = useTestDatabase();

  it('is left waiting, neither failed nor started, while the worker drains the migrations it has', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    // The older one comes first in the take's order.
    await enqueue(pool, { name: 'newer_code', work: 'test.not_deployed_yet', table: 'items', batchSize: 10 });
    await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 10 });

    await testWorker(pool, { work: [touch] }).run({ untilDone: true });

    await expectEveryRowOnce(pool, 'items', 'fill');
    expect(await migrationRow(pool, 'newer_code')).toMatchObject({
      status: MigrationStatus.active,
      failure_error_code: null,
      max_value: null,
    });
    expect(await jobRanges(pool, 'newer_code', { all: true })).toEqual([]);
  });
});

describe('a migration whose runs keep failing', () => {
  const db = useTestDatabase();

  it('is set aside while the others run, shows why, and fails with run_error after maxRunErrors in a row', async () => {
    const { pool } = db();
    await createItems(pool, 'broken_items', range(1, 50));
    await createItems(pool, 'items', range(1, 200));
    // Enqueued first, so it is the first candidate of every take.
    const brokenId = await enqueue(pool, { name: 'broken', work: touch.name, table: 'broken_items', batchSize: 10 });
    await enqueue(pool, { name: 'sound', work: touch.name, table: 'items', batchSize: 10 });
    // An unforeseen fault in recording: every range cut for `broken` is refused by the database.
    await pool.query(`CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.batched_background_migration_id = ${brokenId} THEN RAISE EXCEPTION 'ranges refused'; END IF; RETURN NEW; END $$`);
    await pool.query(
      'CREATE TRIGGER refuse BEFORE INSERT ON batched_background_migration_jobs FOR EACH ROW EXECUTE FUNCTION refuse()',
    );
    const outcomes: RunResult[] = [];
    const worker = testWorker(pool, {
      work: [touch],
      runErrorHoldMs: 300,
      maxRunErrors: 3,
      observers: [{ run: (r) => outcomes.push(r) }],
    });

    const running = worker.run({ untilDone: true });
    const held = await waitFor(async () => {
      const [report] = await migrationReports(pool, { name: 'broken' });
      return report?.holdReason ? report : undefined;
    }, 'the broken migration to be set aside');
    await running;

    expect(held).toMatchObject({
      status: 'running',
      runErrors: expect.any(Number),
      holdReason: expect.stringMatching(/^run error: ranges refused/),
    });
    expect(held.onHoldUntil!.getTime()).toBeGreaterThan(Date.now() - 5_000);
    expect(await migrationRow(pool, 'sound')).toMatchObject({ status: MigrationStatus.finished });
    const touched = await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM items');
    expect(touched.rows[0].t).toEqual([1]);
    expect(await migrationRow(pool, 'broken')).toMatchObject({
      status: MigrationStatus.failed,
      failure_error_code: ErrorCode.run_error,
      failure_message: expect.stringMatching(/^3 runs in a row failed; last error: run error: ranges refused/),
    });
    // Each run error was reported once, the third as the migration's failure.
    const runErrors = outcomes.filter((r) => r.outcome === 'error' && r.migration?.name === 'broken');
    expect(runErrors).toHaveLength(2);
    // Each names the statement that failed (never its values), for logs and Sentry.
    for (const r of runErrors) expect(r.error).toMatchObject({ statement: expect.stringMatching(/bbm_cut_range/) });
    expect(outcomes.filter((r) => r.outcome === 'migration_failed')).toMatchObject([
      { errorCode: 'run_error', migration: { name: 'broken' } },
    ]);
    // The error reported is the one stored on the row.
    const reported = outcomes.find((r) => r.outcome === 'migration_failed');
    expect(reported?.error?.message).toBe((await migrationRow(pool, 'broken'))?.failure_message);
    const [report] = await migrationReports(pool, { name: 'broken' });
    expect(report).toMatchObject({ holdReason: null, onHoldUntil: null });
  });

  it('keeps a finished job committed when cutting the next range fails in the same round trip (several lanes)', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 600));
    const id = await enqueue(pool, { name: 'cut_fails', work: 'test.arming', table: 'items', batchSize: 10 });
    // In several lanes, ranges are cut in the round trips that commit jobs, a lane's worth at a time.
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 2 WHERE id = $1', [id]);
    const arming: Work = {
      name: 'test.arming',
      async do(job) {
        await touch.do(job);
        // From the second job on, every range cut is refused, starting with the cut sent with its COMMIT.
        if (job.start > 10n) await refuseRanges(pool, id);
      },
    };
    const outcomes: RunResult[] = [];
    const worker = testWorker(pool, { work: [arming], observers: [{ run: (r) => outcomes.push(r) }] });

    // The first cut made 32 ranges (two lanes keep 32 ahead) and marked the 17th its cue: the 17th
    // job sends a cut with its COMMIT, which is refused, and the job stays committed. Once none
    // waits, the run that must cut fails.
    expect((await worker.runOnce()).outcome).toBe('migration_started');
    for (let job = 1; job <= 32; job += 1) expect((await worker.runOnce()).outcome, `job ${job}`).toBe('job_succeeded');
    expect((await worker.runOnce()).outcome).toBe('error');

    await expectOnlyRangesDone(pool, 320);
  });

  it('keeps a job committed when the cut beside it fails (one lane), and fails the run that must cut it itself', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 300));
    const id = await enqueue(pool, { name: 'cut_fails', work: touch.name, table: 'items', batchSize: 10 });
    // The first cut makes the sixteen ranges up to 160; every range after them is refused: the
    // cuts beside the 9th to 16th jobs fail, then the lane's own.
    await refuseRanges(pool, id, 160);
    const worker = testWorker(pool, { work: [touch] });

    expect((await worker.runOnce()).outcome).toBe('migration_started');
    for (let job = 1; job <= 16; job += 1) expect((await worker.runOnce()).outcome, `job ${job}`).toBe('job_succeeded');
    const refused = await worker.runOnce();
    expect(refused.outcome).toBe('error');
    expect(refused.error?.message).toContain('ranges refused');

    await expectOnlyRangesDone(pool, 160);
  });

  it('is not held for trouble that is not its fault: a backend terminated mid-run', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    await enqueue(pool, { name: 'unlucky', work: 'test.unlucky', table: 'items', batchSize: 10 });
    let terminated = false;
    const unlucky: Work = {
      name: 'test.unlucky',
      async do(job) {
        await touch.do(job);
        if (!terminated) {
          terminated = true;
          await pool.query('SELECT pg_terminate_backend($1)', [
            (await job.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid,
          ]);
        }
      },
    };
    const outcomes: RunResult[] = [];
    await testWorker(pool, { work: [unlucky], maxRunErrors: 1, observers: [{ run: (r) => outcomes.push(r) }] }).run({
      untilDone: true,
    });

    expect(outcomes.some((r) => r.outcome === 'error' || r.outcome === 'job_failed')).toBe(true);
    expect(outcomes.every((r) => r.heldForMs === undefined)).toBe(true);
    expect(await migrationRow(pool, 'unlucky')).toMatchObject({ status: MigrationStatus.finished });
  });
});

describe('a failed store statement', () => {
  const db = useTestDatabase();

  it('names the statement on the error, with placeholders and never the values', async () => {
    const { pool } = db();
    const secret = 'value-that-must-not-leak';
    const failing = exec(pool, sql`SELECT 1 / 0 AS boom WHERE ${secret}::text IS NOT NULL`);
    await expect(failing).rejects.toMatchObject({
      code: '22012',
      statement: 'SELECT 1 / 0 AS boom WHERE $1::text IS NOT NULL',
    });
    const error = (await failing.catch((e: unknown) => e)) as Error & { statement: string };
    expect(JSON.stringify({ ...error, message: error.message })).not.toContain(secret);
  });
});
