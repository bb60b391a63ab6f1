/**
 * Lanes: several jobs of one migration at once, in one worker or many, still exactly once; lanes
 * changed while it runs; a lane lost mid-job; ranges split on timeout; adaptive sizing; workers
 * that find every lane busy backing off instead of polling.
 */
import { describe, expect, it, onTestFinished } from 'vitest';
import type { Job, RunResult, Work } from '../src/bbm/types.ts';
import { migrationReports } from '../src/bbm/status.ts';
import { JobStatus, MigrationStatus } from '../src/store/codes.ts';
import { createPool } from '../src/store/db.ts';
import { LOCK_NAMESPACE } from '../src/store/locks.ts';
import { useTestDatabase } from './support/database.ts';
import {
  createItems,
  cutItems,
  enqueue,
  expectEveryRowOnce,
  jobRanges,
  migrationRow,
  range,
  testWorker,
  touch,
} from './support/engine.ts';
import { createJobLog, runBbm, startBbm, TEST_CONFIG, waitFor, type BbmProcess } from './support/processes.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Records, per job, its lane and how many jobs of the worker were in flight when it started. */
function observedTouch(delayMs: number) {
  let inFlight = 0;
  const seen: Array<{ lane: number; concurrent: number; start: bigint }> = [];
  const work: Work = {
    name: 'test.touch',
    async do(job: Job) {
      inFlight += 1;
      seen.push({ lane: job.lane, concurrent: inFlight, start: job.start });
      try {
        await touch.do(job);
        await sleep(delayMs);
      } finally {
        inFlight -= 1;
      }
    },
  };
  return { work, seen };
}

describe('lanes', () => {
  const db = useTestDatabase();

  it('run up to max_parallel_jobs jobs of one migration at once, and never more, exactly once', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 600));
    await pool.query('DELETE FROM items WHERE id % 9 = 4');
    const id = await enqueue(pool, { name: 'wide', work: touch.name, table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 3 WHERE id = $1', [id]);
    const { work, seen } = observedTouch(15);
    const worker = testWorker(pool, { work: [work], concurrency: 5 });

    await worker.run({ untilDone: true });

    await expectEveryRowOnce(pool, 'items', 'wide');
    expect(new Set(seen.map((s) => s.lane))).toEqual(new Set([0, 1, 2]));
    expect(Math.max(...seen.map((s) => s.concurrent))).toBe(3);
    const [report] = await migrationReports(pool, { name: 'wide' });
    expect(report).toMatchObject({ lanes: 3, lanesInUse: 0, progress: 1, finishedPrefixEnd: 600n });
  });

  it('follow max_parallel_jobs changed while the migration runs: 1, then 4, then 2', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 900));
    const id = await enqueue(pool, { name: 'retuned', work: touch.name, table: 'items', batchSize: 10 });
    const { work, seen } = observedTouch(10);
    const worker = testWorker(pool, { work: [work], concurrency: 4, intervalMs: 5, maxIntervalMs: 20 });
    const running = worker.run({ untilDone: true });
    const setLanes = (lanes: number) =>
      pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = $1 WHERE id = $2', [lanes, id]);

    await waitFor(async () => seen.length >= 15 && seen, 'jobs in one lane');
    const atOne = seen.length;
    await setLanes(4);
    await waitFor(async () => seen.length >= atOne + 30 && seen, 'jobs in four lanes');
    const atFour = seen.length;
    await setLanes(2);
    const atTwo = seen.length;
    await running;

    await expectEveryRowOnce(pool, 'items', 'retuned');
    expect(new Set(seen.slice(0, atOne).map((s) => s.lane))).toEqual(new Set([0]));
    expect(new Set(seen.slice(atOne + 4, atFour).map((s) => s.lane))).toEqual(new Set([0, 1, 2, 3]));
    // A run begun ahead before the change (at most one per runner) may still start in lane 2 or 3; none after.
    const afterTwo = seen.slice(atTwo + 4);
    expect(afterTwo.length).toBeGreaterThan(10);
    expect(new Set(afterTwo.map((s) => s.lane))).toEqual(new Set([0, 1]));
  });

  it('in one lane, cut the next range beside the job while its work runs', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 250));
    await pool.query('CREATE TABLE work_ends (job_id bigint PRIMARY KEY, at timestamptz NOT NULL)');
    // Runs a while, and records (in the job's transaction) when it ended.
    const slowTouch: Work = {
      name: 'test.slow_touch',
      async do(job) {
        await touch.do(job);
        await sleep(50);
        await job.query(
          `INSERT INTO work_ends (job_id, at)
           SELECT id, clock_timestamp() FROM batched_background_migration_jobs WHERE min_value = $1`,
          [job.start],
        );
      },
    };
    await enqueue(pool, { name: 'one_lane', work: slowTouch.name, table: 'items', batchSize: 10 });
    await testWorker(pool, { work: [slowTouch] }).run({ untilDone: true });
    await expectEveryRowOnce(pool, 'items', 'one_lane');

    // Per job, whether a range was cut while it ran: created (when the cut's round trip reached
    // the server) after the job's run began (started_at) and before its work ended. A range cut in
    // the round trip that commits a job reaches the server after its work ended.
    const { rows } = await pool.query<{ during: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM batched_background_migration_jobs r
                      WHERE r.created_at > j.started_at AND r.created_at < w.at) AS during
       FROM batched_background_migration_jobs j JOIN work_ends w ON w.job_id = j.id ORDER BY j.min_value`,
    );
    // The first cut made sixteen ranges (a fixed size keeps sixteen ahead in one lane, cut again
    // once eight or fewer wait, counting the one running): ranges were cut beside the 9th job
    // (eight more) and the 17th (the last one), and beside no other.
    expect(rows.map((r, i) => (r.during ? i + 1 : 0)).filter(Boolean)).toEqual([9, 17]);
  });

  it('cut again the waiting ranges of a batch size lowered while lanes run, every row once', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 3000));
    await pool.query('DELETE FROM items WHERE id % 7 = 3');
    const id = await enqueue(pool, { name: 'lowered', work: touch.name, table: 'items', batchSize: 40 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 3 WHERE id = $1', [id]);
    const { work, seen } = observedTouch(5);
    const workers = [
      testWorker(pool, { work: [work], concurrency: 2 }),
      testWorker(pool, { work: [work], concurrency: 2 }),
    ];
    const running = Promise.all(workers.map((worker) => worker.run({ untilDone: true })));
    // When the change is visible: a run whose transaction began later reads the new size.
    const setSize = async (size: number) => {
      await pool.query('UPDATE batched_background_migrations SET batch_size = $1 WHERE id = $2', [size, id]);
      const { rows } = await pool.query<{ at: Date }>('SELECT clock_timestamp() AS at');
      return rows[0]!.at;
    };

    await waitFor(async () => seen.length >= 10 && seen, 'jobs at 40');
    const loweredAt = await setSize(10);
    await waitFor(async () => seen.length >= 40 && seen, 'jobs at 10');
    await setSize(25);
    await waitFor(async () => seen.length >= 60 && seen, 'jobs at 25');
    await setSize(7);
    await running;

    await expectEveryRowOnce(pool, 'items', 'lowered');
    // Eight to sixteen ranges of 40 wait at a time (13 of them ran after the change without the
    // cut again, measured); after it, a run that read the new size takes at most one more of 40
    // (its take says the cut is due, and the cut goes with its COMMIT): four runners.
    const { rows } = await pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM batched_background_migration_jobs
       WHERE batched_background_migration_id = $1 AND batch_size = 40 AND started_at > $2`,
      [id, loweredAt],
    );
    expect(rows[0]!.n).toBeLessThanOrEqual(6);
    const { rows: sizes } = await pool.query<{ size: number }>(
      'SELECT batch_size AS size FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1 ORDER BY min_value',
      [id],
    );
    expect(sizes.map((r) => r.size)).toContain(10);
    expect(sizes.at(-1)?.size).toBe(7);
  });

  it('cut again the waiting ranges of a batch size lowered after every range was cut, in several lanes', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 300));
    const id = await enqueue(pool, { name: 'late', work: 'test.gated', table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 2 WHERE id = $1', [id]);
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    let held = 0;
    const gated: Work = {
      name: 'test.gated',
      async do(job) {
        await touch.do(job);
        // Both lanes wait at 241 and 251, long after all 30 ranges were cut and cuts found none left.
        if (job.start >= 241n) {
          held += 1;
          await gate;
        }
      },
    };
    const running = testWorker(pool, { work: [gated], concurrency: 2 }).run({ untilDone: true });
    await waitFor(async () => held >= 2 || undefined, 'both lanes at the gate');
    await pool.query('UPDATE batched_background_migrations SET batch_size = 3 WHERE id = $1', [id]);
    open();
    await running;

    await expectEveryRowOnce(pool, 'items', 'late');
    const { rows } = await pool.query<{ size: number; n: number }>(
      `SELECT batch_size AS size, count(*)::int AS n FROM batched_background_migration_jobs
       WHERE batched_background_migration_id = $1 GROUP BY batch_size ORDER BY batch_size`,
      [id],
    );
    // The ranges past the two taken after the change were cut again at 3.
    expect(rows.map((r) => r.size)).toEqual([3, 10]);
  });

  it('cut again the waiting ranges when the batch size was lowered while the cut waited for its lock', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 600));
    const id = await enqueue(pool, { name: 'waited', work: touch.name, table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 3 WHERE id = $1', [id]);
    expect((await testWorker(pool, { work: [touch] }).runOnce()).outcome).toBe('migration_started');
    const cut = () => cutItems(pool, id);
    const waiting = async () =>
      (
        await pool.query<{ min: string; max: string; size: number }>(
          `SELECT min_value::text AS min, max_value::text AS max, batch_size AS size FROM batched_background_migration_jobs
           WHERE batched_background_migration_id = $1 AND status = $2 ORDER BY min_value`,
          [id, JobStatus.active],
        )
      ).rows;
    await cut();
    // Three lanes keep 32 ranges ahead: 32 of 10 (1..320); sixteen run, so that the next cut goes on to the lock.
    await pool.query(
      `UPDATE batched_background_migration_jobs SET status = $2
       WHERE batched_background_migration_id = $1 AND max_value <= 160`,
      [id, JobStatus.finished],
    );
    expect((await waiting()).map((r) => r.size)).toEqual(Array(16).fill(10));

    // The cut reads the size (10), then waits for the cut lock while the size is lowered to 5.
    const holder = await pool.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, Number(id)]);
      const waited = cut();
      await waitFor(
        async () =>
          (
            await pool.query(
              `SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = $1 AND objid = $2`,
              [LOCK_NAMESPACE, Number(id)],
            )
          ).rowCount === 1,
        'the cut waiting for its lock',
      );
      await pool.query('UPDATE batched_background_migrations SET batch_size = 5 WHERE id = $1', [id]);
      await holder.query('ROLLBACK');
      await waited;
    } finally {
      holder.release();
    }

    // The sixteen ranges of 10 that waited were cut again at 5 (161..320), and more after them.
    const after = await waiting();
    expect(after.map((r) => r.size)).toEqual(Array(32).fill(5));
    expect(after.map((r) => [BigInt(r.min), BigInt(r.max)])).toEqual(
      range(0, 31).map((k) => [BigInt(161 + 5 * k), BigInt(165 + 5 * k)]),
    );
  });

  it('redo once, in another lane, a range whose lane lost its connection mid-job, and nothing twice', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 200));
    const id = await enqueue(pool, { name: 'cut_off', work: 'test.cut_off', table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 2 WHERE id = $1', [id]);
    let killed = false;
    const outcomes: RunResult[] = [];
    const work: Work = {
      name: 'test.cut_off',
      async do(job) {
        await touch.do(job);
        if (!killed && job.start <= 55n && 55n <= job.end) {
          killed = true;
          // As a DBA (or a failover) would: the backend running this job goes away mid-job.
          await pool.query('SELECT pg_terminate_backend($1)', [
            (await job.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid,
          ]);
          await job.query('SELECT 1');
        }
      },
    };
    const worker = testWorker(pool, { work: [work], concurrency: 2, observers: [{ run: (r) => outcomes.push(r) }] });

    await worker.run({ untilDone: true });

    expect(killed).toBe(true);
    expect(outcomes.filter((r) => r.outcome === 'job_failed' || r.outcome === 'error').length).toBeGreaterThan(0);
    await expectEveryRowOnce(pool, 'items', 'cut_off');
    // The lost job's row was never written as failed: its lane died with the connection, and the
    // range, still active and no longer locked, was taken by the next lane and ran once.
    expect((await jobRanges(pool, 'cut_off')).every((j) => j.attempts === 1)).toBe(true);
  });

  it('split a range that times out in halves, down to the minimum, then finish', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 64));
    const id = await enqueue(pool, { name: 'splitting', work: 'test.poisoned', table: 'items', batchSize: 32 });
    await pool.query('UPDATE batched_background_migrations SET min_batch_size = 4 WHERE id = $1', [id]);
    const work: Work = {
      name: 'test.poisoned',
      async do(job) {
        await touch.do(job);
        // Row 13 is slow to migrate in a big batch: any range of more than 4 rows holding it times out.
        if (job.start <= 13n && 13n <= job.end && job.end - job.start + 1n > 4n) {
          await job.query("SET LOCAL statement_timeout = '50ms'");
          await job.query('SELECT pg_sleep(5)');
        }
      },
    };
    const results: RunResult[] = [];
    const worker = testWorker(pool, { work: [work], observers: [{ run: (r) => results.push(r) }] });

    await worker.run({ untilDone: true });

    await expectEveryRowOnce(pool, 'items', 'splitting');
    const splits = results.filter((r) => r.job?.split).map((r) => [Number(r.job!.start), Number(r.job!.end)]);
    expect(splits).toEqual([
      [1, 32],
      [1, 16],
      [9, 16],
    ]);
    const ranges = (await jobRanges(pool, 'splitting')).map((j) => [j.min, j.max, j.attempts]);
    expect(ranges).toEqual([
      [1, 8, 1],
      [9, 12, 1],
      [13, 16, 1],
      [17, 32, 1],
      [33, 64, 1],
    ]);
  });

  it("split a range whose job runs past runTimeoutMs (the run's own timeout, no SQL cancelled), then finish", async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 16));
    await enqueue(pool, { name: 'overrun', work: 'test.overrun', table: 'items', batchSize: 16 });
    const work: Work = {
      name: 'test.overrun',
      async do(job) {
        await touch.do(job);
        // Row 5 is slow outside SQL in any range of more than 2 rows: the job waits for its run to time out.
        if (job.start <= 5n && 5n <= job.end && job.end - job.start + 1n > 2n) {
          await new Promise((resolve) => job.signal.addEventListener('abort', resolve, { once: true }));
          throw job.signal.reason;
        }
      },
    };
    const results: RunResult[] = [];
    const worker = testWorker(pool, {
      work: [work],
      // Well above what a job of a few rows takes on a loaded machine: only the waiting ranges time out.
      runTimeoutMs: 500,
      maxAttempts: 2,
      observers: [{ run: (r) => results.push(r) }],
    });

    await worker.run({ untilDone: true });

    expect(results.filter((r) => r.outcome === 'job_failed').map((r) => r.error?.message)).toEqual([
      expect.stringMatching(/runTimeoutMs/),
      expect.stringMatching(/runTimeoutMs/),
      expect.stringMatching(/runTimeoutMs/),
    ]);
    await expectEveryRowOnce(pool, 'items', 'overrun');
    const splits = results.filter((r) => r.job?.split).map((r) => [Number(r.job!.start), Number(r.job!.end)]);
    expect(splits).toEqual([
      [1, 16],
      [1, 8],
      [5, 8],
    ]);
    expect((await jobRanges(pool, 'overrun')).map((j) => [j.min, j.max, j.attempts])).toEqual([
      [1, 4, 1],
      [5, 6, 1],
      [7, 8, 1],
      [9, 16, 1],
    ]);
  });

  it('leave a range that cannot be split further to fail its attempts as before', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 8));
    const id = await enqueue(pool, { name: 'stuck', work: 'test.stuck', table: 'items', batchSize: 8 });
    await pool.query('UPDATE batched_background_migrations SET min_batch_size = 4 WHERE id = $1', [id]);
    const work: Work = {
      name: 'test.stuck',
      async do(job) {
        await job.query("SET LOCAL lock_timeout = '10ms'");
        if (job.start <= 2n && 2n <= job.end)
          throw Object.assign(new Error('could not obtain lock on row'), { code: '55P03' });
      },
    };
    const worker = testWorker(pool, { work: [work], maxAttempts: 2 });

    await worker.run({ untilDone: true });

    const row = await migrationRow(pool, 'stuck');
    expect(row).toMatchObject({ status: MigrationStatus.failed, failure_error_code: 4 });
    // [1, 8] split into [1, 4] and [5, 8]; [1, 4] could not be split into halves of 4 rows.
    expect((await jobRanges(pool, 'stuck')).map((j) => [j.min, j.max, j.status, j.attempts])).toEqual([
      [1, 4, JobStatus.failed, 2],
      [5, 8, JobStatus.finished, 1],
    ]);
  });

  it('adapt the batch size toward target_job_ms, recording each range size, within bounds', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 3000));
    const id = await enqueue(pool, { name: 'adaptive', work: 'test.paced', table: 'items', batchSize: 5 });
    await pool.query(
      'UPDATE batched_background_migrations SET target_job_ms = 40, max_batch_size = 150 WHERE id = $1',
      [id],
    );
    const work: Work = {
      name: 'test.paced',
      async do(job) {
        await touch.do(job);
        // Work that costs 0.5 ms per row: 80 rows make a 40 ms job.
        await sleep(Number(job.end - job.start + 1n) * 0.5);
      },
    };
    const worker = testWorker(pool, { work: [work] });

    await worker.run({ untilDone: true });

    await expectEveryRowOnce(pool, 'items', 'adaptive');
    const { rows } = await pool.query<{ batch_size: number }>(
      'SELECT batch_size FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1 ORDER BY min_value',
      [id],
    );
    const sizes = rows.map((r) => r.batch_size);
    expect(sizes[0]).toBe(5);
    // Growth is capped at 1.5× a step, and the size never passes max_batch_size.
    for (let i = 1; i < sizes.length; i += 1) expect(sizes[i]!).toBeLessThanOrEqual(Math.ceil(sizes[i - 1]! * 1.5) + 1);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(150);
    // It settles near 80 rows (timers are coarse: a wide band).
    const settled = sizes.slice(15, -1);
    expect(settled.length).toBeGreaterThan(5);
    for (const size of settled) expect(size).toBeGreaterThanOrEqual(40);
    for (const size of settled) expect(size).toBeLessThanOrEqual(150);
    // The chosen size is written back, where the next worker starts.
    expect((await migrationReports(pool, { name: 'adaptive' }))[0]?.batchSize).toBeGreaterThanOrEqual(40);
  });

  it('with four workers on one lane, workers locked out back off instead of polling', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 400));
    await enqueue(pool, { name: 'narrow', work: touch.name, table: 'items', batchSize: 5 });
    const outcomes: string[] = [];
    const { work, seen } = observedTouch(5);
    const workers = Array.from({ length: 4 }, () =>
      testWorker(pool, {
        work: [work],
        intervalMs: 10,
        maxIntervalMs: 2_000,
        observers: [{ run: (r) => outcomes.push(r.outcome) }],
      }),
    );

    await Promise.all(workers.map((w) => w.run({ untilDone: true })));

    await expectEveryRowOnce(pool, 'items', 'narrow');
    const jobs = outcomes.filter((o) => o === 'job_succeeded').length;
    const lockedOut = outcomes.filter((o) => o === 'lock_in_use').length;
    expect(jobs).toBe(80);
    // One lane: the four workers (sharing the work function, so its count spans them) ran one job at a time.
    expect(Math.max(...seen.map((j) => j.concurrent))).toBe(1);
    expect(new Set(seen.map((j) => j.lane))).toEqual(new Set([0]));
    // Polling every 10 ms for the ~1 s the migration takes would be ~300 runs; backing off, a few dozen.
    expect(lockedOut).toBeLessThan(jobs);
  });
});

describe("names written into the run's statements", () => {
  const db = useTestDatabase();

  it('stay inert with standard_conforming_strings off, for a table named with a quote and a backslash', async () => {
    const { pool: admin, name, url } = db();
    await admin.query(`ALTER DATABASE ${name} SET standard_conforming_strings = off`);
    const pool = createPool({ connectionString: url, max: 4 });
    onTestFinished(() => pool.end());
    // Made by someone with CREATE: the name ends a string literal under backslash escapes.
    const table = `odd\\'; DROP TABLE victim; --`;
    await pool.query('CREATE TABLE victim (id int)');
    await pool.query(`CREATE TABLE "${table}" (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO "${table}" (id) SELECT generate_series(1, 50)`);
    await enqueue(pool, { name: 'odd', work: touch.name, table: `"${table}"`, batchSize: 10 });

    await testWorker(pool, { work: [touch] }).run({ untilDone: true });

    expect((await migrationRow(pool, 'odd'))?.status).toBe(MigrationStatus.finished);
    expect((await pool.query(`SELECT array_agg(DISTINCT touched) AS t FROM "${table}"`)).rows[0].t).toEqual([1]);
    expect((await pool.query('SELECT count(*)::int AS n FROM victim')).rows[0].n).toBe(0);
  });
});

describe('lanes across processes', () => {
  const db = useTestDatabase();

  it.each([2, 3])(
    '4 lanes over %i `bbm run` processes, SIGKILLed mid-job over and over: every row exactly once',
    async (processes) => {
      const { pool, url } = db();
      await createJobLog(pool);
      await createItems(pool, 'items', range(1, 3000));
      await pool.query('DELETE FROM items WHERE id % 11 = 5');
      const id = await enqueue(pool, { name: 'fleet', work: 'test.touch', table: 'items', batchSize: 10 });
      await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 4 WHERE id = $1', [id]);
      const env = { DATABASE_URL: url, BBM_TEST_JOB_SLEEP_MS: '15' };
      const start = () => startBbm(['run', '--config', TEST_CONFIG, '--concurrency', '2'], env);
      const fleet: BbmProcess[] = Array.from({ length: processes }, start);

      let kills = 0;
      while (kills < 5) {
        await waitFor(
          async () => (await pool.query('SELECT count(*)::int AS n FROM job_log')).rows[0].n > 20 * (kills + 1),
          'jobs to run',
        );
        const victim = fleet.splice(Math.floor(Math.random() * fleet.length), 1)[0]!;
        victim.child.kill('SIGKILL');
        expect((await victim.exited).signal).toBe('SIGKILL');
        kills += 1;
        fleet.push(start());
      }
      const survivor = await runBbm(['run', '--config', TEST_CONFIG, '--until-done', '--concurrency', '4'], env);
      expect(survivor, survivor.output).toMatchObject({ code: 0 });
      // A worker started by the last kill may still be starting: stop each once it is up.
      const pids = fleet.map((worker) => worker.child.pid);
      await waitFor(
        async () =>
          (
            await pool.query(
              'SELECT count(*)::int AS n FROM batched_background_migration_workers WHERE pid = ANY($1)',
              [pids],
            )
          ).rows[0].n === pids.length,
        'the fleet to be up',
      );
      for (const worker of fleet) worker.child.kill('SIGTERM');
      for (const worker of fleet) expect((await worker.exited).code, worker.output()).toBe(0);

      await expectEveryRowOnce(pool, 'items', 'fleet');
      const duplicates = await pool.query('SELECT range_start FROM job_log GROUP BY range_start HAVING count(*) > 1');
      expect(duplicates.rows).toEqual([]);
      // The lanes were shared: more than one process ran jobs.
      expect((await pool.query('SELECT count(DISTINCT pid)::int AS n FROM job_log')).rows[0].n).toBeGreaterThan(1);
    },
  );
});
