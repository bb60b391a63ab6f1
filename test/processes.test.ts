/**
 * Workers as separate processes (`bbm run`), competing for the same database: exactly-once
 * processing, a SIGKILL mid-job, and graceful and hard stops.
 */
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { JobStatus, MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, jobRanges, migrationRow, range } from './support/engine.ts';
import { createJobLog, runBbm, startBbm, TEST_CONFIG, waitFor, waitForStall } from './support/processes.ts';

async function prepare(
  pool: pg.Pool,
  migrations: number,
  rows: number,
  batchSize: number,
  status: number = MigrationStatus.active,
): Promise<string[]> {
  await createJobLog(pool);
  const names: string[] = [];
  for (let m = 0; m < migrations; m += 1) {
    await createItems(pool, `items_${m}`, range(1, rows));
    // Holes in the ids, so ranges are found by the index, not by arithmetic.
    await pool.query(`DELETE FROM items_${m} WHERE id % 7 = 3`);
    names.push(`touch_${m}`);
    await enqueue(pool, { name: `touch_${m}`, work: 'test.touch', table: `items_${m}`, batchSize, status });
  }
  return names;
}

/** Every row of every table touched exactly once, and every range logged exactly once. */
async function expectExactlyOnce(pool: pg.Pool, names: string[]): Promise<void> {
  for (const [m, name] of names.entries()) {
    const { rows } = await pool.query(`SELECT touched, count(*)::int AS n FROM items_${m} GROUP BY touched`);
    expect(rows, name).toEqual([{ touched: 1, n: expect.any(Number) }]);
    const jobs = await jobRanges(pool, name);
    expect(jobs.every((j) => j.status === JobStatus.finished)).toBe(true);
    for (let i = 1; i < jobs.length; i += 1) expect(jobs[i]!.min).toBe(jobs[i - 1]!.max + 1);
    expect((await migrationRow(pool, name))?.status).toBe(MigrationStatus.finished);
  }
  const duplicates = await pool.query(
    'SELECT migration, range_start FROM job_log GROUP BY migration, range_start HAVING count(*) > 1',
  );
  expect(duplicates.rows).toEqual([]);
}

describe('worker processes', () => {
  const db = useTestDatabase();

  it.each([2, 4, 8])('%i concurrent workers process every row exactly once', async (workers) => {
    const { pool, url } = db();
    const names = await prepare(pool, 3, 3000, 20, MigrationStatus.paused);
    const fleet = Array.from({ length: workers }, () =>
      startBbm(['run', '--config', TEST_CONFIG], { DATABASE_URL: url }),
    );
    // Every worker is up (it announces itself) before the work is released to them.
    await waitFor(
      async () =>
        (await pool.query('SELECT count(*)::int AS n FROM batched_background_migration_workers')).rows[0].n === workers,
      'the fleet',
    );
    await pool.query(`UPDATE batched_background_migrations SET status = ${MigrationStatus.active}`);
    await waitFor(
      async () =>
        (
          await pool.query(
            `SELECT bool_and(status = ${MigrationStatus.finished}) AS done FROM batched_background_migrations`,
          )
        ).rows[0].done,
      'the migrations to finish',
    );

    for (const worker of fleet) worker.child.kill('SIGTERM');
    for (const worker of fleet) expect(await worker.exited, worker.output()).toEqual({ code: 0, signal: null });
    await expectExactlyOnce(pool, names);
    const pids = await pool.query('SELECT count(DISTINCT pid)::int AS n FROM job_log');
    // Different migrations hold different locks, so the processes share the work.
    expect(pids.rows[0].n).toBeGreaterThan(1);
  });

  it('a worker SIGKILLed mid-job loses nothing: the restarted fleet redoes that range once', async () => {
    const { pool, url } = db();
    const names = await prepare(pool, 1, 500, 50);
    const victim = startBbm(['run', '--config', TEST_CONFIG], { DATABASE_URL: url, BBM_TEST_STALL_AT: '260' });
    await waitForStall(pool, 'the victim to stall mid-job');
    const doneBefore = (await jobRanges(pool, names[0]!)).length;

    victim.child.kill('SIGKILL');
    expect((await victim.exited).signal).toBe('SIGKILL');
    const survivor = await runBbm(['run', '--config', TEST_CONFIG, '--until-done'], { DATABASE_URL: url });

    expect(survivor, survivor.output).toMatchObject({ code: 0 });
    expect(doneBefore).toBeGreaterThan(0);
    await expectExactlyOnce(pool, names);
    // The killed range was never recorded: it was created again and ran once.
    expect((await jobRanges(pool, names[0]!)).every((j) => j.attempts === 1)).toBe(true);
  });

  it('SIGTERM lets the job in flight finish and commit, then exits 0', async () => {
    const { pool, url } = db();
    const names = await prepare(pool, 1, 200, 50);
    const worker = startBbm(['run', '--config', TEST_CONFIG], {
      DATABASE_URL: url,
      BBM_TEST_STALL_AT: '60',
      BBM_TEST_STALL_SECONDS: '1',
    });
    await waitForStall(pool, 'the worker to be mid-job');

    worker.child.kill('SIGTERM');

    expect(await worker.exited, worker.output()).toEqual({ code: 0, signal: null });
    // Ids 1..58 less the holes are the first 50 rows; the job holding id 60 was in flight.
    const jobs = await jobRanges(pool, names[0]!);
    expect(jobs.map((j) => [j.min, j.max, j.status])).toEqual([
      [1, 58, JobStatus.finished],
      [59, expect.any(Number), JobStatus.finished],
    ]);
    expect((await migrationRow(pool, names[0]!))?.status).toBe(MigrationStatus.running);
  });

  it('a second SIGTERM cancels the job in flight and rolls it back, then exits 0', async () => {
    const { pool, url } = db();
    const names = await prepare(pool, 1, 200, 50);
    const worker = startBbm(['run', '--config', TEST_CONFIG], { DATABASE_URL: url, BBM_TEST_STALL_AT: '60' });
    await waitForStall(pool, 'the worker to be mid-job');

    worker.child.kill('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 100));
    worker.child.kill('SIGTERM');

    expect(await worker.exited, worker.output()).toEqual({ code: 0, signal: null });
    // Only the first range is recorded; the second's writes were rolled back with it.
    expect((await jobRanges(pool, names[0]!)).map((j) => [j.min, j.max])).toEqual([[1, 58]]);
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM items_0 WHERE touched > 0 AND id > 58');
    expect(rows[0].n).toBe(0);
  });
});
