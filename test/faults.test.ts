/**
 * Fault classes, bounded in time: backends of working lanes terminated over and over, and the
 * server crashed (immediate shutdown) and restarted twice mid-drain. Every row is done exactly
 * once, every range runs once, and the workers recover by themselves.
 */
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import type { Work } from '../src/bbm/types.ts';
import { Worker } from '../src/bbm/worker.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { useOwnCluster, useTestDatabase } from './support/database.ts';
import { createItems, enqueue, quiet, range } from './support/engine.ts';
import { waitFor } from './support/processes.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Counts hits per row and logs each range in the job's transaction; sleeps a little so jobs overlap. */
const logged: Work = {
  name: 'test.logged',
  async do(job) {
    await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.column} BETWEEN $1 AND $2`, [
      job.start,
      job.end,
    ]);
    await job.query('INSERT INTO job_log (range_start, range_end) VALUES ($1, $2)', [job.start, job.end]);
    await job.query('SELECT pg_sleep(0.005)');
  },
};

async function prepare(pool: pg.Pool, rows: number): Promise<void> {
  await createItems(pool, 'items', range(1, rows));
  await pool.query('DELETE FROM items WHERE id % 13 = 6');
  await pool.query('CREATE TABLE job_log (range_start bigint, range_end bigint)');
  const id = await enqueue(pool, { name: 'faulty', work: logged.name, table: 'items', batchSize: 10 });
  await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 4 WHERE id = $1', [id]);
}

async function expectExactlyOnce(pool: pg.Pool): Promise<void> {
  expect((await pool.query(`SELECT status FROM batched_background_migrations WHERE name = 'faulty'`)).rows).toEqual([
    { status: MigrationStatus.finished },
  ]);
  expect((await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM items')).rows[0].t).toEqual([1]);
  const twice = await pool.query('SELECT range_start FROM job_log GROUP BY range_start HAVING count(*) > 1');
  expect(twice.rows).toEqual([]);
  const { rows: jobs } = await pool.query<{ min: string; max: string; status: number }>(
    'SELECT min_value::text AS min, max_value::text AS max, status FROM batched_background_migration_jobs ORDER BY min_value',
  );
  expect(jobs.every((j) => j.status === 2)).toBe(true);
  for (let i = 1; i < jobs.length; i += 1) expect(BigInt(jobs[i]!.min)).toBe(BigInt(jobs[i - 1]!.max) + 1n);
}

/** Two workers of two lanes each; `errors` counts the runs the faults broke. */
function workers(url: string) {
  const errors = { runs: 0 };
  const fleet = Array.from(
    { length: 2 },
    () =>
      new Worker({
        connectionString: url,
        work: [logged],
        logger: quiet,
        concurrency: 2,
        intervalMs: 20,
        maxIntervalMs: 300,
        startupJitterMs: 0,
        observers: [
          { run: (r) => void (r.outcome === 'error' || r.outcome === 'job_failed' ? (errors.runs += 1) : 0) },
        ],
      }),
  );
  return { fleet, errors };
}

describe('backends of working lanes terminated over and over', () => {
  const db = useTestDatabase();

  it('leave every row done exactly once, and the workers carry on', async () => {
    const { pool, url, name } = db();
    await prepare(pool, 4000);
    const { fleet, errors } = workers(url);
    const running = fleet.map((w) => w.run({ untilDone: true }));

    let terminated = 0;
    for (let i = 0; i < 40; i += 1) {
      await sleep(40);
      const { rows } = await pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM (
           SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE datname = $1 AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')
             AND backend_type = 'client backend' AND application_name = 'pg-bbm' ORDER BY random() LIMIT 1) t`,
        [name],
      );
      terminated += rows[0]!.n;
    }
    await Promise.all(running);
    await Promise.all(fleet.map((w) => w.close()));

    expect(terminated).toBeGreaterThan(10);
    expect(errors.runs).toBeGreaterThan(5);
    await expectExactlyOnce(pool);
  });
});

describe('the server crashed and restarted mid-drain', () => {
  // A server of its own: crashing the shared one would take every other test file down with it.
  const own = useOwnCluster({ poolMax: 2 });

  it('twice: every row done exactly once, and the workers recover by themselves', async () => {
    const { cluster, pool } = own();
    await prepare(pool, 3000);
    const { fleet, errors } = workers(cluster.connectionString());
    const running = fleet.map((w) => w.run({ untilDone: true }));
    const logged = async () => {
      try {
        return (await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM job_log')).rows[0]!.n;
      } catch {
        return 0;
      }
    };

    for (const after of [40, 120]) {
      await waitFor(async () => (await logged()) >= after, `${after} jobs`);
      await cluster.crash();
      await sleep(300);
      await cluster.start();
    }
    await Promise.all(running);
    await Promise.all(fleet.map((w) => w.close()));

    // Every lane had a run cut off by each crash, or failed to connect while the server was down.
    expect(errors.runs).toBeGreaterThanOrEqual(8);
    await expectExactlyOnce(pool);
  });
});
