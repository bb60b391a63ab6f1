/**
 * Foreground protection, made real: the migration's own runs slow an application's commits. While
 * `contending.on`, the work holds the rows the probes update (the workers' rows) for 100 ms, as a
 * backfill holding rows an application writes would; commits with no run in flight stay fast.
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../src/bbm/metrics.ts';
import { migrationReports } from '../src/bbm/status.ts';
import type { HealthOptions, LanesEvent, Work } from '../src/bbm/types.ts';
import { JobStatus, MigrationStatus } from '../src/store/codes.ts';
import { liveWorkers } from '../src/store/dashboard.ts';
import { LIVE_WORKER_WINDOW_MS, whileRunsHeld } from '../src/store/workers.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, finishedJobs, migrationRow, range, testWorker, touch } from './support/engine.ts';
import { waitFor } from './support/processes.ts';

/** Foreground protection alone, checked often. */
const PROTECTION: HealthOptions = {
  // Well above what the migration's own flushes do to commits here (2-4×, more on a loaded
  // machine), well below what holding the probes' rows for 100 ms does (100 ms against about 1).
  commitLatencyFactor: 10,
  checkMs: 100,
  autovacuum: false,
  latency: false,
  maxTransactionAgeMs: null,
  maxReplayLagBytes: null,
  maxWalArchiveReady: null,
};

/** touch, which while `on` also holds every worker's row (what the probes update) for 100 ms. */
function contendingTouch(): { work: Work; contending: { on: boolean } } {
  const contending = { on: false };
  const work: Work = {
    name: touch.name,
    async do(job) {
      if (contending.on) {
        await job.query('SELECT 1 FROM batched_background_migration_workers FOR UPDATE');
        await job.query('SELECT pg_sleep(0.1)');
      }
      await touch.do(job);
    },
  };
  return { work, contending };
}

const logLines = (into: string[]) =>
  pino({ level: 'info' }, { write: (line: string) => into.push((JSON.parse(line) as { msg: string }).msg) });

describe('commit latency (health.commitLatencyFactor)', () => {
  const db = useTestDatabase();

  it('sheds lanes first, and pauses lanes only at one lane; gives the time back, then lanes, once commits are fast', async () => {
    const { pool } = db();
    await createItems(pool, 'lanes_items', range(1, 300_000));
    await enqueue(pool, { name: 'wide', work: touch.name, table: 'lanes_items', batchSize: 200 });
    await pool.query(`UPDATE batched_background_migrations SET max_parallel_jobs = 4 WHERE name = 'wide'`);
    const { work, contending } = contendingTouch();
    const messages: string[] = [];
    const laneEvents: LanesEvent[] = [];
    const worker = testWorker(pool, {
      work: [work],
      concurrency: 4,
      observers: [{ lanes: (event) => laneEvents.push(event) }],
      logger: logLines(messages),
      intervalMs: 1,
      health: PROTECTION,
    });
    // Contending from the first job: the quiet rounds learn the baseline with no run in flight all
    // the same. (Four uncontended lanes on two cores can slow commits tenfold by CPU alone, and
    // shed lanes before the contention this test is about begins.)
    contending.on = true;
    const running = worker.run();
    const lines = () => messages.filter((m) => m.startsWith('commit latency:'));
    try {
      await waitFor(async () => lines().some((m) => m.endsWith('lanes run 50 % of the time')), 'lanes paused');
      // Lanes go first: no lane pauses before the migration is down to one lane.
      const firstPause = lines().findIndex((m) => m.endsWith('lanes run 50 % of the time'));
      const downToOne = lines().findIndex((m) => /wide sheds lanes 2 → 1$/.test(m));
      expect(downToOne).toBeGreaterThanOrEqual(0);
      expect(downToOne).toBeLessThan(firstPause);
      // What bbm status and the status page read: why the lanes are down (the latency controller
      // is off here, so nothing else sheds them), and the worker's duty cycle, published as it
      // changed (the heartbeat comes every 30 s).
      const [report] = await migrationReports(pool, { name: 'wide' });
      expect(report).toMatchObject({ lanes: 4, lanesAllowed: 1, lanesReason: 'commit latency' });
      const [resting] = await liveWorkers(pool, LIVE_WORKER_WINDOW_MS);
      expect(resting?.dutyCycle).toBeLessThanOrEqual(0.5);

      contending.on = false;
      // A lane may come back before any pause (two rounds that saw no contention while the duty
      // cycle was whole): the recovery this test is about is the one after the pause.
      const laneBackAfterPause = () =>
        lines().findIndex((m, i) => i > firstPause && /wide grows lanes back 1 → 2$/.test(m));
      await waitFor(async () => laneBackAfterPause() >= 0, 'a lane given back after the pause');
      // The time comes back whole before any lane does.
      expect(lines()[laneBackAfterPause() - 1]).toMatch(/lanes run again 100 % of the time$/);
      expect((await liveWorkers(pool, LIVE_WORKER_WINDOW_MS))[0]?.dutyCycle).toBeNull();
      // Told to observers (bbm_lane_changes_total) as the latency controller's changes are.
      expect(laneEvents).toContainEqual({ migration: 'wide', direction: 'shed', from: 2, to: 1 });
      expect(laneEvents).toContainEqual({ migration: 'wide', direction: 'grown', from: 1, to: 2 });
      // The baseline is what commits take with no run in flight: well under the 100 ms the runs
      // held rows for. Beside one lane, probes arriving at random wait for the rest of the job in
      // flight, 50 ms in the median (back to back, all but the first of a round ran in the gap
      // between two jobs: medians of 0.4-2.7 ms, and lanes went 1 -> 2 -> 1 without a pause).
      const [, median, quiet] = /commits take ([\d.]+) ms \(median\), ([\d.]+) ms with no run in flight/.exec(
        lines()[firstPause]!,
      )!;
      expect(Number(quiet)).toBeLessThan(50);
      expect(Number(median)).toBeGreaterThanOrEqual(Math.max(20, PROTECTION.commitLatencyFactor! * Number(quiet)));
    } finally {
      contending.on = false;
      await worker.stop();
      await running;
    }
  });

  it('pauses its lanes while the migration slows commits, runs whole again once it does not, and every row is done once', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 100_000));
    await enqueue(pool, { name: 'backfill', work: touch.name, table: 'items', batchSize: 400 });
    const { work, contending } = contendingTouch();
    const messages: string[] = [];
    const metrics = createMetrics();
    const shares: number[] = [];
    const worker = testWorker(pool, {
      work: [work],
      observers: [metrics.observer, { dutyCycle: (share) => shares.push(share) }],
      logger: logLines(messages),
      intervalMs: 1,
      health: PROTECTION,
    });
    const gauge = async () => (await metrics.registry.getSingleMetric('bbm_duty_cycle')?.get())?.values[0]?.value;
    const running = worker.run();
    // Commits as usual first: the quiet rounds learn what they take.
    await waitFor(async () => (await finishedJobs(pool, 'backfill')) >= 15, '15 jobs');
    contending.on = true;
    await waitFor(async () => (await gauge()) !== undefined && (await gauge())! <= 0.5, 'lanes run half the time');
    const pausedFrom = await finishedJobs(pool, 'backfill');
    // The lane rests for real: after some job, the next starts that job's time later or more.
    await waitFor(async () => (await finishedJobs(pool, 'backfill')) >= pausedFrom + 3, 'three jobs while paused');
    const gaps = await pool.query<{ job_ms: number; rest_ms: number | null }>(
      `SELECT (extract(epoch FROM finished_at - started_at) * 1000)::float8 AS job_ms,
              (extract(epoch FROM lead(started_at) OVER (ORDER BY id) - finished_at) * 1000)::float8 AS rest_ms
       FROM batched_background_migration_jobs WHERE status = ${JobStatus.finished} ORDER BY id OFFSET $1`,
      [pausedFrom],
    );
    expect(gaps.rows.some((r) => r.rest_ms !== null && r.rest_ms >= r.job_ms)).toBe(true);

    contending.on = false;
    await waitFor(
      async () => messages.some((m) => /lanes run again 100 % of the time$/.test(m)),
      'lanes running all the time once commits are fast again',
    );
    await waitFor(
      async () => (await migrationRow(pool, 'backfill'))?.status === MigrationStatus.finished,
      'the migration done',
    );
    await worker.stop();
    await running;

    const wrong = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM items WHERE touched <> 1');
    expect(wrong.rows[0]!.n).toBe(0);
    expect(messages.some((m) => /^commit latency: commits take .*: lanes run 50 % of the time$/.test(m))).toBe(true);
    // Told to observers at every change (down to half or less), the gauge whole again at the end.
    expect(Math.min(...shares)).toBeLessThanOrEqual(0.5);
    expect(shares.at(-1)).toBe(1);
    expect(await gauge()).toBe(1);
  });

  it('a quiet round waits for the runs of every worker to end and holds their takes meanwhile; it gives up in time', async () => {
    const { pool } = db();
    await createItems(pool, 'slow_items', range(1, 10_000));
    await enqueue(pool, { name: 'slow', work: 'test.slow', table: 'slow_items', batchSize: 100 });
    await pool.query(`UPDATE batched_background_migrations SET max_parallel_jobs = 2 WHERE name = 'slow'`);
    let inWork = 0;
    const slow: Work = {
      name: 'test.slow',
      async do(job) {
        inWork += 1;
        try {
          await job.query('SELECT pg_sleep(0.3)');
          await touch.do(job);
        } finally {
          inWork -= 1;
        }
      },
    };
    // Another worker, without foreground protection of its own: its runs hold the lock all the same.
    const other = testWorker(pool, { work: [slow], concurrency: 2, intervalMs: 1 });
    const running = other.run();
    const finished = () => finishedJobs(pool, 'slow');
    const client = await pool.connect();
    try {
      await waitFor(async () => inWork === 2, 'two jobs in flight');
      // Too short a wait for jobs of 300 ms: given up, and the takes waiting behind it go on.
      expect(await whileRunsHeld(client, 50, async () => 'measured')).toBeUndefined();
      await waitFor(async () => inWork === 2 && (await finished()) >= 3, 'jobs going on');

      const seen = await whileRunsHeld(client, 5_000, async () => {
        const atStart = { inWork, jobs: await finished() };
        await new Promise((resolve) => setTimeout(resolve, 700));
        return { atStart, atEnd: { inWork, jobs: await finished() } };
      });
      // Granted once the jobs in flight ended; none began while it was held (two 300 ms jobs would have).
      expect(seen?.atStart.inWork).toBe(0);
      expect(seen?.atEnd).toEqual(seen?.atStart);
      const held = seen!.atEnd.jobs;
      await waitFor(async () => (await finished()) >= held + 2, 'the other worker going on after it');
    } finally {
      client.release();
      await other.stop();
      await running;
    }
  });
});
