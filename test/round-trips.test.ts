/**
 * What a run says to the database, per job: the take (bbm_take_job) sets the run's backstops and
 * holds the quiet lock itself, and says whether a cut is due with the job; the runner sends no cut
 * when it is not; workers of 0.7 still take with the signature they call.
 */
import { describe, expect, it } from 'vitest';
import { VALID_WORK_NAME } from '../src/bbm/work-registry.ts';
import { createPool } from '../src/store/db.ts';
import { LOCK_NAMESPACE, QUIET_LOCK_KEY } from '../src/store/locks.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, expectEveryRowOnce, jobRanges, range, testWorker, touch } from './support/engine.ts';

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
      const taken = await client.query('SELECT * FROM bbm_take_job($1::text[], $2, NULL, 70000)', [
        [touch.name],
        VALID_WORK_NAME,
      ]);
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
        const { rows } = await client.query('SELECT cut_due FROM bbm_take_job($1::text[], $2, NULL, 70000)', [
          [touch.name],
          VALID_WORK_NAME,
        ]);
        return rows[0].cut_due as boolean;
      } finally {
        await client.query('ROLLBACK');
        client.release();
      }
    };
    // A fixed batch size keeps max(16, 4 x lanes) ranges ahead, and cuts again at half of that.
    // One lane: the cut runs beside the job and counts it.
    expect(await take(1, 8)).toBe(true);
    expect(await take(1, 9)).toBe(false);
    // Three and five lanes: the cut runs after the job's COMMIT, and does not count it.
    expect(await take(3, 9)).toBe(true);
    expect(await take(3, 10)).toBe(false);
    expect(await take(5, 11)).toBe(true);
    expect(await take(5, 12)).toBe(false);
    // An adaptive size keeps two per lane ahead.
    expect(await take(1, 1, 'target_job_ms = 100')).toBe(true);
    expect(await take(1, 2, 'target_job_ms = 100')).toBe(false);
    // A lowered batch size makes a cut due, to cut the waiting ranges again; a raised one does not.
    expect(await take(1, 12, 'batch_size = 5')).toBe(true);
    expect(await take(1, 12, 'batch_size = 20')).toBe(false);
  });

  it('sends no cut while enough ranges wait: in two lanes, one cut in three jobs at most, and every row once', async () => {
    const { pool, name, url } = db();
    await createItems(pool, 'items', range(1, 600));
    const id = await enqueue(pool, { name: 'wide', work: touch.name, table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 2 WHERE id = $1', [id]);
    await pool.query(`ALTER DATABASE ${name} SET track_functions = 'pl'`);
    // Connections of their own, opened after the setting; their counts reach the statistics when they close.
    const workerPool = createPool({ connectionString: url, max: 6 });
    await testWorker(workerPool, { work: [touch], concurrency: 2 }).run({ untilDone: true });
    await workerPool.end();

    const jobs = (await jobRanges(pool, 'wide', { all: true })).length;
    expect(jobs).toBe(60);
    let calls = 0;
    for (let tries = 0; tries < 50 && calls === 0; tries += 1) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      const { rows } = await pool.query(
        `SELECT pg_stat_clear_snapshot(), coalesce(sum(calls), 0)::int AS calls FROM pg_stat_user_functions
         WHERE funcname = 'bbm_cut_range'`,
      );
      calls = rows[0].calls;
    }
    // Without the take's word, every job but the last sends one: 61 calls, measured; with it and
    // two ranges per lane ahead (0.8), 37-41. Sixteen ahead, cut again at eight: 12-14 in five
    // runs, a cut of eight about once in eight jobs, and some that find the other lane's cut
    // already made (the take's count is a job old when the cut runs).
    expect(calls).toBeGreaterThan(0);
    expect(calls).toBeLessThanOrEqual(20);
    await expectEveryRowOnce(pool, 'items', 'wide');
  });
});
