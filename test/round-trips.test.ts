/**
 * What a run says to the database, per job: the take (bbm_take_job) sets the run's backstops and
 * holds the quiet lock itself, and says whether a cut is due with the job; the runner sends no cut
 * when it is not; workers of 0.7 still take with the signature they call. A lane that just
 * finished a job takes the next of the same migration and lane (bbm_take_next), and from every
 * migration about once a second.
 */
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import type { Work } from '../src/bbm/types.ts';
import { VALID_WORK_NAME } from '../src/bbm/work-registry.ts';
import { JobStatus, MigrationStatus } from '../src/store/codes.ts';
import { createPool } from '../src/store/db.ts';
import {
  LANE_LOCK_BASE,
  LANES_RECHECK_MS,
  LOCK_NAMESPACE,
  MIGRATION_KEY_MODULUS,
  QUIET_LOCK_KEY,
} from '../src/store/locks.ts';
import { useTestDatabase } from './support/database.ts';
import {
  createItems,
  cutItems,
  enqueue,
  expectEveryRowOnce,
  jobRanges,
  migrationRow,
  nextJob,
  range,
  testWorker,
  touch,
} from './support/engine.ts';
import { waitFor } from './support/processes.ts';

/** A take as a worker of touch's work takes (bbm_take_job with 70-s backstops), reading `columns`. */
function takeJob(client: pg.PoolClient, columns = '*') {
  return client.query(`SELECT ${columns} FROM bbm_take_job($1::text[], $2, NULL, 70000)`, [
    [touch.name],
    VALID_WORK_NAME,
  ]);
}

/** The columns 0.7 workers read from the three-argument take. */
const TAKE_COLUMNS_0_7 = [
  'migration_id',
  'lane',
  'name',
  'status',
  'job_signature_name',
  'table_name',
  'column_name',
  'batching_strategy',
  'batch_size',
  'max_parallel_jobs',
  'target_job_ms',
  'min_batch_size',
  'max_batch_size',
  'step',
  'job_id',
  'job_min',
  'job_max',
  'job_status',
  'job_attempts',
  'job_batch_size',
];

/** The ranges of migration `id` marked as a cut's cue (cut_cue), by where they start. */
async function cuesOf(pool: pg.Pool, id: bigint): Promise<number[]> {
  const { rows } = await pool.query<{ min: string }>(
    `SELECT min_value::text AS min FROM batched_background_migration_jobs
     WHERE batched_background_migration_id = $1 AND cut_cue ORDER BY min_value`,
    [id],
  );
  return rows.map((r) => Number(r.min));
}

/** Marks every range of migration `id` that starts before `min` finished. */
async function finishBefore(pool: pg.Pool, id: bigint, min: number): Promise<void> {
  await pool.query(
    `UPDATE batched_background_migration_jobs SET status = $3 WHERE batched_background_migration_id = $1 AND min_value < $2`,
    [id, min, JobStatus.finished],
  );
}

/**
 * Drains a 2-lane migration of 60 ranges of 10 rows, checks every row was done once, and
 * returns how often each of the named functions was called meanwhile (track_functions).
 */
async function drainTwoLanesCounting(
  { pool, name, url }: { pool: pg.Pool; name: string; url: string },
  functions: string[],
): Promise<Record<string, number>> {
  await createItems(pool, 'items', range(1, 600));
  const id = await enqueue(pool, { name: 'wide', work: touch.name, table: 'items', batchSize: 10 });
  await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 2 WHERE id = $1', [id]);
  await pool.query(`ALTER DATABASE ${name} SET track_functions = 'pl'`);
  // Connections of their own, opened after the setting; their counts reach the statistics when they close.
  const workerPool = createPool({ connectionString: url, max: 6 });
  await testWorker(workerPool, { work: [touch], concurrency: 2 }).run({ untilDone: true });
  await workerPool.end();
  await expectEveryRowOnce(pool, 'items', 'wide');
  expect((await jobRanges(pool, 'wide', { all: true })).length).toBe(60);

  const counts: Record<string, number> = {};
  for (let tries = 0; tries < 50 && !functions.every((f) => counts[f] !== undefined); tries += 1) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const { rows } = await pool.query<{ funcname: string; calls: number }>(
      `SELECT pg_stat_clear_snapshot(), funcname, sum(calls)::int AS calls FROM pg_stat_user_functions
       WHERE funcname = ANY ($1) GROUP BY funcname`,
      [functions],
    );
    for (const row of rows) counts[row.funcname] = row.calls;
  }
  return counts;
}

describe('a run in few statements', () => {
  const db = useTestDatabase();

  /** A started migration with `lanes` lanes and `ranges` ranges of 10 cut ahead over items 1..200. */
  async function startedMigration(lanes: number, ranges: number): Promise<bigint> {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 200));
    const id = await enqueue(pool, { name: 'm', work: touch.name, table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = $2 WHERE id = $1', [id, lanes]);
    expect((await testWorker(pool, { work: [touch] }).runOnce()).outcome).toBe('migration_started');
    await pool.query(
      `INSERT INTO batched_background_migration_jobs (batched_background_migration_id, min_value, max_value, status, attempts, batch_size)
       SELECT $1, s, s + 9, 1, 0, 10 FROM generate_series(1, $2::int * 10, 10) s`,
      [id, ranges],
    );
    return id;
  }

  it('takes with the backstops set and the quiet lock held, in the take itself; 0.7 workers take as before', async () => {
    const { pool } = db();
    const id = await startedMigration(1, 3);
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const taken = await takeJob(client);
      expect(taken.rows[0]).toMatchObject({ migration_id: String(id), job_min: '1', job_max: '10' });
      expect(taken.rows[0].wal_lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
      const settings = await client.query(
        `SELECT current_setting('statement_timeout') AS st, current_setting('idle_in_transaction_session_timeout') AS idle,
                current_setting('client_connection_check_interval') AS check`,
      );
      expect(settings.rows[0]).toEqual({ st: '70s', idle: '70s', check: '1s' });
      const quiet = await client.query(
        `SELECT mode FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND classid = $1 AND objid = $2`,
        [LOCK_NAMESPACE, QUIET_LOCK_KEY >>> 0],
      );
      expect(quiet.rows).toEqual([{ mode: 'ShareLock' }]);
      await client.query('ROLLBACK');

      // The settings end with the run's transaction.
      expect((await client.query(`SELECT current_setting('statement_timeout') AS st`)).rows[0].st).toBe('0');

      await client.query('BEGIN');
      const old = await client.query('SELECT * FROM bbm_take_job($1::text[], $2, NULL)', [
        [touch.name],
        VALID_WORK_NAME,
      ]);
      expect(old.fields.map((f) => f.name)).toEqual(TAKE_COLUMNS_0_7);
      expect(old.rows[0]).toMatchObject({ migration_id: String(id), job_min: '1', job_max: '10' });
      expect((await client.query(`SELECT current_setting('statement_timeout') AS st`)).rows[0].st).toBe('0');
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  });

  it("says, when it turns a lane away, when to look again: at a hold's end, soon while a controller bounds the lanes, after the jobs' time in slow start or while the last ranges run, not while every lane runs with ranges waiting", async () => {
    const { pool } = db();
    const id = await startedMigration(2, 5);
    const setRow = (set: string) => pool.query(`UPDATE batched_background_migrations SET ${set} WHERE id = $1`, [id]);
    /** The take's answer in a transaction of its own while `lanes` runs hold lanes 0 .. lanes - 1. */
    const busyTake = async (lanes: number) => {
      const holders = await Promise.all(Array.from({ length: lanes }, () => pool.connect()));
      const client = await pool.connect();
      try {
        for (const [lane, holder] of holders.entries()) {
          await holder.query('BEGIN');
          await holder.query('SELECT pg_advisory_xact_lock($1 + $2::int, ($3::bigint % $4)::int)', [
            LANE_LOCK_BASE,
            lane,
            id,
            MIGRATION_KEY_MODULUS,
          ]);
        }
        await client.query('BEGIN');
        const { rows } = await takeJob(client);
        await client.query('ROLLBACK');
        return rows[0] as { migration_id: string; look_again_ms: number | null } | undefined;
      } finally {
        client.release();
        for (const holder of holders) {
          await holder.query('ROLLBACK');
          holder.release();
        }
      }
    };
    // Both lanes run, ranges still wait: only a run's end frees a lane (the caller backs off).
    expect(await busyTake(2)).toEqual(expect.objectContaining({ migration_id: '0', look_again_ms: null }));
    // One lane allowed by a controller, and running: any worker's controller may give one back.
    await setRow(`lanes_allowed = 1, lanes_reason = 'latency'`);
    const bound = await busyTake(1);
    expect(bound?.migration_id).toBe('0');
    expect(bound?.look_again_ms).toBeGreaterThan(LANES_RECHECK_MS / 2);
    expect(bound?.look_again_ms).toBeLessThanOrEqual(LANES_RECHECK_MS);
    // In slow start: a quarter of that before any job is timed, then after 4 jobs' time.
    await setRow(`lanes_reason = 'slow start'`);
    const untimed = await busyTake(1);
    expect(untimed?.look_again_ms).toBeGreaterThan(LANES_RECHECK_MS / 8);
    expect(untimed?.look_again_ms).toBeLessThanOrEqual(LANES_RECHECK_MS / 4);
    const finishJobs = (where: string, durationMs: number) =>
      pool.query(
        `UPDATE batched_background_migration_jobs SET status = $2, duration_ms = $3
         WHERE batched_background_migration_id = $1 AND ${where}`,
        [id, JobStatus.finished, durationMs],
      );
    await finishJobs('min_value = 41', 5);
    const timed = await busyTake(1);
    expect(timed?.look_again_ms).toBeLessThanOrEqual(4 * 5);
    // Held for 20 s more: look again then.
    await setRow(`lanes_allowed = NULL, on_hold_until = now() + interval '20 seconds'`);
    const held = await busyTake(0);
    expect(held?.look_again_ms).toBeGreaterThan(15_000);
    expect(held?.look_again_ms).toBeLessThanOrEqual(20_000);
    // Its last ranges all run in other lanes: it finishes soon.
    await setRow('on_hold_until = NULL');
    await finishJobs('min_value > 1', 30);
    await pool.query(`UPDATE batched_background_migrations SET max_value = 10 WHERE id = $1`, [id]);
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const { rows } = await takeJob(client, 'job_min');
      expect(rows).toEqual([{ job_min: '1' }]);
      const last = await busyTake(0);
      expect(last?.migration_id).toBe('0');
      // About one job's time: the last one finished took 30 ms.
      expect(last?.look_again_ms).toBeLessThanOrEqual(30);
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
  });

  it('says a cut is due when the cut would cut: in one lane beside the job, in several after it', async () => {
    const { pool } = db();
    const take = async (lanes: number, waitingOrRunning: number, change?: string) => {
      await pool.query('TRUNCATE batched_background_migrations, batched_background_migration_jobs CASCADE');
      await pool.query('DROP TABLE IF EXISTS items');
      const id = await startedMigration(lanes, waitingOrRunning);
      if (change) await pool.query(`UPDATE batched_background_migrations SET ${change} WHERE id = $1`, [id]);
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        const { rows } = await takeJob(client, 'cut_due');
        return rows[0].cut_due as boolean;
      } finally {
        await client.query('ROLLBACK');
        client.release();
      }
    };
    // Ranges written without a cue (as here, or split in two) are counted. A fixed batch size keeps
    // 16 ranges ahead in one lane and max(32, 8 x lanes) in several, and cuts again at half of that.
    // One lane: the cut runs beside the job and counts it.
    expect(await take(1, 8)).toBe(true);
    expect(await take(1, 9)).toBe(false);
    // Three and five lanes: the cut runs after the job's COMMIT, and does not count it.
    expect(await take(3, 17)).toBe(true);
    expect(await take(3, 18)).toBe(false);
    expect(await take(5, 21)).toBe(true);
    expect(await take(5, 22)).toBe(false);
    // An adaptive size keeps two per lane ahead.
    expect(await take(1, 1, 'target_job_ms = 100')).toBe(true);
    expect(await take(1, 2, 'target_job_ms = 100')).toBe(false);
    // A lowered batch size makes a cut due, to cut the waiting ranges again; a raised one does not.
    expect(await take(1, 12, 'batch_size = 5')).toBe(true);
    expect(await take(1, 12, 'batch_size = 20')).toBe(false);
  });

  it('marks one range of each cut as its cue: the take says a cut is due there, and nowhere else', async () => {
    const { pool } = db();
    const cueAt = async (lanes: number) => {
      await pool.query('TRUNCATE batched_background_migrations, batched_background_migration_jobs CASCADE');
      await pool.query('DROP TABLE IF EXISTS items');
      await createItems(pool, 'items', range(1, 1000));
      const id = await enqueue(pool, { name: 'm', work: touch.name, table: 'items', batchSize: 10 });
      await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = $2 WHERE id = $1', [id, lanes]);
      expect((await testWorker(pool, { work: [touch] }).runOnce()).outcome).toBe('migration_started');
      const cut = () => cutItems(pool, id);
      const cues = () => cuesOf(pool, id);
      const takeDue = async () => {
        const client = await pool.connect();
        try {
          await client.query('BEGIN');
          const { rows } = await takeJob(client, 'job_min, cut_due');
          return [Number(rows[0].job_min), rows[0].cut_due as boolean];
        } finally {
          await client.query('ROLLBACK');
          client.release();
        }
      };
      await cut();
      const [first] = await cues();
      // A cut that finds more waiting than a cue is cut for (a stale cue, a lowered depth) cuts
      // nothing, and marks the range that should have been the cue, so that the next cut is not lost.
      await pool.query(
        'UPDATE batched_background_migration_jobs SET cut_cue = false WHERE batched_background_migration_id = $1',
        [id],
      );
      expect(await cut()).toBe(0);
      expect(await cues()).toEqual([first]);
      await finishBefore(pool, id, first! - 10);
      const before = await takeDue();
      await finishBefore(pool, id, first!);
      const at = await takeDue();
      // It is the cue the take reads, not a count (which says due here too).
      await pool.query(
        'UPDATE batched_background_migration_jobs SET cut_cue = false WHERE batched_background_migration_id = $1',
        [id],
      );
      expect(await takeDue()).toEqual([first, false]);
      // A range cut larger than a lowered batch size makes the cut due (it cuts the waiting ones again).
      await pool.query('UPDATE batched_background_migrations SET batch_size = 5 WHERE id = $1', [id]);
      expect(await takeDue()).toEqual([first, true]);
      await pool.query('UPDATE batched_background_migrations SET batch_size = 10 WHERE id = $1', [id]);
      await pool.query(
        'UPDATE batched_background_migration_jobs SET cut_cue = (min_value = $2) WHERE batched_background_migration_id = $1',
        [id, first],
      );
      // The cut it makes due cuts (no early return), and marks the next cue.
      expect(await cut()).toBeGreaterThan(0);
      return { cues: await cues(), before, at };
    };
    // One lane keeps 16 ahead: the cue is the 9th range (8 wait with it, as the count said); the
    // next cut (8 ranges, 161..240) marks its first.
    expect(await cueAt(1)).toEqual({ cues: [81, 161], before: [71, false], at: [81, true] });
    // Four lanes keep 32 ahead: the 17th range. Cut with it still waiting (16 wait), the next 16
    // (321..480) are cut and their first marked (cut after its COMMIT, 17, and the second).
    expect(await cueAt(4)).toEqual({ cues: [161, 321], before: [151, false], at: [161, true] });
  });

  it('cuts with a cue taken while other lanes hold ranges before it, so the queue does not run dry', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 1000));
    const id = await enqueue(pool, { name: 'm', work: touch.name, table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 4 WHERE id = $1', [id]);
    expect((await testWorker(pool, { work: [touch] }).runOnce()).outcome).toBe('migration_started');
    const cut = () => cutItems(pool, id);
    const cues = () => cuesOf(pool, id);
    // Four lanes keep 32 ranges cut ahead (1..320), the cue on the 17th (161).
    expect(await cut()).toBe(32);
    expect(await cues()).toEqual([161]);
    await finishBefore(pool, id, 141);
    // Two lanes hold 141 and 151; a third takes the cue and commits it.
    const lanes = await Promise.all([pool.connect(), pool.connect(), pool.connect()]);
    try {
      const taken: Array<[number, boolean | null]> = [];
      for (const client of lanes) {
        await client.query('BEGIN');
        const { rows } = await takeJob(client, 'job_id, job_min, cut_due');
        taken.push([Number(rows[0].job_min), rows[0].cut_due as boolean | null]);
        if (client === lanes[2]) {
          await client.query('UPDATE batched_background_migration_jobs SET status = $2 WHERE id = $1', [
            rows[0].job_id,
            JobStatus.finished,
          ]);
          await client.query('COMMIT');
        }
      }
      expect(taken).toEqual([
        [141, false],
        [151, false],
        [161, true],
      ]);
      // 17 ranges have status active (15 waiting behind the cue, 2 held before it): 0.9.2 took that
      // for enough, cut nothing, and aimed its new cue at 151, which a lane held, so none was set.
      expect(await cut()).toBe(15);
      expect(await cues()).toEqual([161, 321]);
    } finally {
      for (const client of lanes) {
        await client.query('ROLLBACK');
        client.release();
      }
    }
  });

  it('sends no cut while enough ranges wait: in two lanes, one cut in three jobs at most, and every row once', async () => {
    const calls = await drainTwoLanesCounting(db(), ['bbm_cut_range']);
    // Without the take's word, every job but the last sends one: 61 calls, measured; with it and
    // two ranges per lane ahead (0.8), 37-41. Sixteen ahead, cut again at eight: 12-14 in five
    // runs, a cut of eight about once in eight jobs, and some that find the other lane's cut
    // already made (the take's count is a job old when the cut runs).
    expect(calls.bbm_cut_range).toBeGreaterThan(0);
    expect(calls.bbm_cut_range).toBeLessThanOrEqual(20);
  });
});

describe('the take after a job', () => {
  const db = useTestDatabase();

  it('takes the same migration and lane first (bbm_take_next), and nothing it may not take', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 100));
    const id = await enqueue(pool, { name: 'next', work: touch.name, table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 2 WHERE id = $1', [id]);
    expect((await testWorker(pool, { work: [touch] }).runOnce()).outcome).toBe('migration_started');
    await pool.query(
      `INSERT INTO batched_background_migration_jobs (batched_background_migration_id, min_value, max_value, status, attempts, batch_size)
       VALUES ($1, 1, 10, 1, 0, 10), ($1, 11, 20, 1, 0, 10)`,
      [id],
    );
    const next = async (lane: number, names = [touch.name], whileHeld?: () => Promise<void>) => {
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        const { rows } = await client.query('SELECT * FROM bbm_take_next($1, $2, $3::text[], 70000)', [
          id,
          lane,
          names,
        ]);
        if (rows[0]) {
          const { rows: settings } = await client.query(
            `SELECT current_setting('statement_timeout') AS st,
                    EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
                            AND classid = $1 AND objid = $2 AND mode = 'ShareLock') AS quiet`,
            [LOCK_NAMESPACE, QUIET_LOCK_KEY >>> 0],
          );
          expect(settings[0]).toEqual({ st: '70s', quiet: true });
        }
        await whileHeld?.();
        return rows[0] as { lane: number; job_min: string; step: null; cut_due: boolean } | undefined;
      } finally {
        await client.query('ROLLBACK');
        client.release();
      }
    };

    expect(await next(1)).toMatchObject({ lane: 1, job_min: '1', step: null, cut_due: true });
    // Two lanes take two ranges; a lane past max_parallel_jobs, or past lanes_allowed, takes nothing.
    expect(await next(0, [touch.name], async () => expect((await next(1))?.job_min).toBe('11'))).toBeDefined();
    expect(await next(2)).toBeUndefined();
    await pool.query('UPDATE batched_background_migrations SET lanes_allowed = 1 WHERE id = $1', [id]);
    expect(await next(1)).toBeUndefined();
    expect(await next(0)).toBeDefined();
    // The lane held by another run: nothing (bbm_take_job would look at the other lanes).
    expect(await next(0, [touch.name], async () => expect(await next(0)).toBeUndefined())).toBeDefined();
    // Work this worker lacks, a hold, a pause: nothing.
    expect(await next(0, ['test.other'])).toBeUndefined();
    await pool.query(
      `UPDATE batched_background_migrations SET on_hold_until = now() + interval '1 minute' WHERE id = $1`,
      [id],
    );
    expect(await next(0)).toBeUndefined();
    await pool.query('UPDATE batched_background_migrations SET on_hold_until = NULL, status = 0 WHERE id = $1', [id]);
    expect(await next(0)).toBeUndefined();
    // No range waiting: nothing (the run then takes with bbm_take_job, which says to cut).
    await pool.query('UPDATE batched_background_migrations SET status = 4 WHERE id = $1', [id]);
    await pool.query(
      'UPDATE batched_background_migration_jobs SET status = 2 WHERE batched_background_migration_id = $1',
      [id],
    );
    expect(await next(0)).toBeUndefined();
  });

  it('is how a chained lane takes, with bbm_take_job for the first take and when it finds nothing', async () => {
    const calls = await drainTwoLanesCounting(db(), ['bbm_take_next', 'bbm_take_job']);
    // 60 jobs in two lanes: most taken after the job before them in their lane; bbm_take_job for
    // each lane's first take, the takes that start and finish the migration, and each lane's
    // first after a second of chaining (60 and 9-10 in three runs).
    expect(calls.bbm_take_next).toBeGreaterThanOrEqual(50);
    expect(calls.bbm_take_job).toBeLessThanOrEqual(20);
  });

  it('still takes from every migration about once a second: an older migration let out of a hold gets the lane', async () => {
    const { pool } = db();
    await createItems(pool, 'first', range(1, 50));
    await createItems(pool, 'second', range(1, 2000));
    const slow: Work = {
      name: 'test.slow',
      async do(job) {
        await touch.do(job);
        await new Promise((resolve) => setTimeout(resolve, 5));
      },
    };
    await enqueue(pool, { name: 'older', work: slow.name, table: 'first', batchSize: 10 });
    const worker = testWorker(pool, { work: [slow] });
    expect((await nextJob(worker)).outcome).toBe('job_succeeded');
    // Held (as a health signal or a run error would hold it), it stays running and first in
    // bbm_take_job's order (older first), but is skipped until the hold lifts.
    const hold = (until: string) =>
      pool.query(`UPDATE batched_background_migrations SET on_hold_until = ${until} WHERE name = 'older'`);
    await hold(`now() + interval '1 hour'`);
    await enqueue(pool, { name: 'newer', work: slow.name, table: 'second', batchSize: 5 });
    const running = worker.run({ untilDone: true });
    await waitFor(
      async () => (await jobRanges(pool, 'newer')).length >= 10 || undefined,
      'jobs of the newer migration',
    );
    await hold('NULL');
    await waitFor(
      async () => (await migrationRow(pool, 'older'))?.status === MigrationStatus.finished || undefined,
      'the older one done',
    );
    // The lane went back to the older migration while the newer one still had ranges to run
    // (400 of 5 rows, some 3 s of work): bbm_take_next alone would have kept it on the newer.
    expect((await migrationRow(pool, 'newer'))?.status).not.toBe(MigrationStatus.finished);
    await running;
    await expectEveryRowOnce(pool, 'first', 'older');
    await expectEveryRowOnce(pool, 'second', 'newer');
  });
});
