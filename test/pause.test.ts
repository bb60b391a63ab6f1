/**
 * Pausing a migration while a worker runs it, the ways operators do (`bbm pause`, the status
 * page's pause), with the default `pauseMs: 0`, where each job's commit also takes the next job.
 * The job in flight finishes; no job starts after the pause has returned.
 */
import pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startOpsServer } from '../src/bbm/ops-server.ts';
import { createStatusPage } from '../src/bbm/status-page.ts';
import type { Work } from '../src/bbm/types.ts';
import { JobStatus, MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import {
  createItems,
  enqueue,
  expectEveryRowOnce,
  jobRanges,
  migrationRow,
  nextJob,
  quiet,
  range,
  testWorker,
  touch,
} from './support/engine.ts';
import { runBbm, waitFor } from './support/processes.ts';

const TOKEN = 'operator-token-0123456789';

type Way = 'bbm pause' | 'the status page';

/** Pauses `fill` the way an operator does; resolves once the command has returned. */
async function pauseFill(way: Way, pool: pg.Pool, url: string): Promise<void> {
  if (way === 'bbm pause') {
    const result = await runBbm(['pause', '--name', 'fill'], { DATABASE_URL: url });
    expect(result, result.output).toMatchObject({ code: 0 });
    return;
  }
  const server = await startOpsServer({
    page: createStatusPage({ db: pool, token: TOKEN, log: quiet }),
    db: pool,
    port: 0,
  });
  onTestFinished(() => server.close());
  const response = await fetch(`http://${server.host}:${server.port}/api/migrations/fill/pause`, {
    method: 'POST',
    headers: { 'x-bbm-token': TOKEN },
  });
  expect(response.status).toBe(200);
}

describe('a pause of a migration a worker is running', () => {
  const db = useTestDatabase();

  it.each<Way>(['bbm pause', 'the status page'])(
    'through %s: the job in flight finishes, and no job starts after the pause returns',
    async (way) => {
      const { pool, url } = db();
      await createItems(pool, 'items', range(1, 200));
      await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 5 });
      const starts: number[] = [];
      let calls = 0;
      let reached!: () => void;
      const gateReached = new Promise<void>((resolve) => (reached = resolve));
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      const work: Work = {
        name: touch.name,
        async do(job) {
          starts.push(performance.now());
          calls += 1;
          // The third job, taken in the commit of the second: held in flight while the pause happens.
          if (calls === 3) {
            reached();
            await gate;
          }
          await touch.do(job);
        },
      };
      const worker = testWorker(pool, { work: [work] });
      expect(worker.options.pauseMs).toBe(0);
      // Started before the pause is set up: starting writes the migration's row, which the pause waits on below.
      expect((await nextJob(worker)).outcome).toBe('job_succeeded');

      // The pause's UPDATE waits behind a lock on the migration's row until the third job is in flight,
      // so that it lands at a known moment, whatever the command's start-up time.
      const blocker = new pg.Client(url);
      blocker.on('error', () => {});
      await blocker.connect();
      onTestFinished(() => blocker.end().catch(() => {}));
      await blocker.query('BEGIN');
      await blocker.query("SELECT 1 FROM batched_background_migrations WHERE name = 'fill' FOR NO KEY UPDATE");
      const blockerPid = (await blocker.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      const pausing = pauseFill(way, pool, url);
      await waitFor(
        async () =>
          (await pool.query('SELECT 1 FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))', [blockerPid]))
            .rowCount,
        'the pause to wait for the lock',
      );
      const running = worker.run({ untilDone: true });
      try {
        await gateReached;
        await blocker.query('COMMIT');
        await blocker.end();
        await pausing;
      } finally {
        release();
      }
      const pausedAt = performance.now();
      await running;

      expect(starts.filter((at) => at > pausedAt).length, 'jobs started after the pause returned').toBe(0);
      expect(calls).toBe(3);
      expect((await migrationRow(pool, 'fill'))?.status).toBe(MigrationStatus.paused);
      // The job in flight committed.
      expect((await jobRanges(pool, 'fill')).map((j) => [j.min, j.status])).toEqual([
        [1, JobStatus.finished],
        [6, JobStatus.finished],
        [11, JobStatus.finished],
      ]);

      const resumed = await runBbm(['resume', '--name', 'fill'], { DATABASE_URL: url });
      expect(resumed, resumed.output).toMatchObject({ code: 0 });
      await testWorker(pool, { work: [touch] }).run({ untilDone: true });
      await expectEveryRowOnce(pool, 'items', 'fill');
    },
  );
});
