/**
 * Foreground protection, made real: commits slowed by the server itself. `commit_delay` makes
 * every WAL flush wait 100 ms before it starts (as a saturated disk would make it wait), which needs a
 * server with fsync on: one of this file's own, not the suite's ephemeral one.
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../src/bbm/metrics.ts';
import type { HealthOptions, LanesEvent } from '../src/bbm/types.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { useOwnCluster } from './support/database.ts';
import { createItems, drain, enqueue, migrationRow, range, testWorker, touch } from './support/engine.ts';
import { waitFor } from './support/processes.ts';

/** Foreground protection alone, checked often. */
const PROTECTION: HealthOptions = {
  // Above what the migration's own flushes do to commits here (about 3×), below what
  // commit_delay does (100 ms, against 0.5 ms alone and about 5 ms on a loaded machine).
  commitLatencyFactor: 10,
  checkMs: 100,
  autovacuum: false,
  latency: false,
  maxTransactionAgeMs: null,
  maxReplayLagBytes: null,
  maxWalArchiveReady: null,
};

describe('commit latency (health.commitLatencyFactor)', () => {
  const own = useOwnCluster({ poolMax: 10 });

  const setCommitDelay = async (microseconds: number) => {
    const { pool } = own();
    await pool.query(`ALTER SYSTEM SET commit_delay = ${microseconds}`);
    await pool.query('ALTER SYSTEM SET commit_siblings = 0');
    await pool.query('SELECT pg_reload_conf()');
  };
  const jobSizes = async (migration: string): Promise<number[]> =>
    (
      await own().pool.query<{ s: number }>(
        `SELECT j.batch_size AS s FROM batched_background_migration_jobs j
           JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id
         WHERE m.name = $1 ORDER BY j.id`,
        [migration],
      )
    ).rows.map((r) => r.s);

  it('sheds lanes first, and cuts smaller ranges only at one lane; gives lanes back once commits are fast', async () => {
    const { pool } = own();
    await createItems(pool, 'lanes_items', range(1, 300_000));
    await enqueue(pool, { name: 'wide', work: touch.name, table: 'lanes_items', batchSize: 200 });
    await pool.query(`UPDATE batched_background_migrations SET max_parallel_jobs = 4 WHERE name = 'wide'`);
    const messages: string[] = [];
    const laneEvents: LanesEvent[] = [];
    const worker = testWorker(pool, {
      work: [touch],
      concurrency: 4,
      observers: [{ lanes: (event) => laneEvents.push(event) }],
      logger: pino(
        { level: 'info' },
        { write: (line: string) => messages.push((JSON.parse(line) as { msg: string }).msg) },
      ),
      intervalMs: 1,
      health: PROTECTION,
    });
    const running = worker.run();
    try {
      await waitFor(async () => (await jobSizes('wide')).length >= 20, '20 jobs');
      await setCommitDelay(100_000);
      await waitFor(async () => messages.some((m) => m.includes('ranges cut at 50 %')), 'ranges cut smaller');
      // Lanes go first: no range is cut smaller before the migration is down to one lane.
      const lines = () => messages.filter((m) => m.startsWith('commit latency:'));
      const firstCut = lines().findIndex((m) => /ranges cut at \d+ % of their size$/.test(m));
      expect(lines().findIndex((m) => /wide sheds lanes 2 → 1$/.test(m))).toBeLessThan(firstCut);

      await setCommitDelay(0);
      await waitFor(async () => lines().some((m) => /wide grows lanes back 1 → 2$/.test(m)), 'a lane given back');
      // The size comes back whole before any lane does.
      const firstLaneBack = lines().findIndex((m) => /wide grows lanes back 1 → 2$/.test(m));
      expect(lines()[firstLaneBack - 1]).toMatch(/ranges grow back to 100 % of their size$/);
      // Told to observers (bbm_lane_changes_total) as the latency controller's changes are.
      expect(laneEvents).toContainEqual({ migration: 'wide', direction: 'shed', from: 2, to: 1 });
      expect(laneEvents).toContainEqual({ migration: 'wide', direction: 'grown', from: 1, to: 2 });
    } finally {
      await worker.stop();
      await running;
      await setCommitDelay(0);
      // Out of the next test's way.
      await pool.query(
        `UPDATE batched_background_migrations SET status = ${MigrationStatus.paused} WHERE name = 'wide'`,
      );
    }
  });

  it('cuts smaller ranges while commits are slow, grows them back once they are not, and every row is done once', async () => {
    const { pool } = own();
    await createItems(pool, 'items', range(1, 300_000));
    await enqueue(pool, { name: 'backfill', work: touch.name, table: 'items', batchSize: 400 });
    const lines: string[] = [];
    const metrics = createMetrics();
    const scales: number[] = [];
    const worker = testWorker(pool, {
      work: [touch],
      observers: [metrics.observer, { batchScale: (scale) => scales.push(scale) }],
      logger: pino({ level: 'info' }, { write: (line: string) => lines.push(line) }),
      intervalMs: 1,
      health: PROTECTION,
    });
    const running = worker.run();
    // Commits as usual first: the probes learn what they take.
    await waitFor(async () => (await jobSizes('backfill')).length >= 15, '15 jobs at full size');
    expect((await jobSizes('backfill'))[0]).toBe(400);

    await setCommitDelay(100_000);
    await waitFor(
      async () => (await jobSizes('backfill')).some((size) => size <= 100),
      'ranges cut at a quarter of their size',
    );
    const cutAt = (await jobSizes('backfill')).length;
    const gauge = async () => (await metrics.registry.getSingleMetric('bbm_batch_scale')?.get())?.values[0]?.value;
    expect(await gauge()).toBeLessThanOrEqual(0.25);

    await setCommitDelay(0);
    const messages = () => lines.map((line) => (JSON.parse(line) as { msg: string }).msg);
    await waitFor(
      async () => messages().some((m) => /ranges grow back to 100 % of their size$/.test(m)),
      'ranges back at their full size once commits are fast again',
    );
    await waitFor(
      async () =>
        (await jobSizes('backfill')).slice(cutAt).includes(400) ||
        (await migrationRow(pool, 'backfill'))?.status === MigrationStatus.finished,
      'a range cut at its full size (or the migration done)',
    );
    await worker.stop();
    await running;
    await drain(testWorker(pool, { work: [touch] }));

    expect((await migrationRow(pool, 'backfill'))?.status).toBe(MigrationStatus.finished);
    const wrong = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM items WHERE touched <> 1');
    expect(wrong.rows[0]!.n).toBe(0);
    expect(messages().some((m) => /^commit latency: commits take .* ranges cut at 50 % of their size$/.test(m))).toBe(
      true,
    );
    // Told to observers at every change (down to a quarter or less), the gauge whole again at the end.
    expect(Math.min(...scales)).toBeLessThanOrEqual(0.25);
    expect(scales.at(-1)).toBe(1);
    expect(await gauge()).toBe(1);
  });
});
