/** `bbm run` as users deploy it: the compiled command, the default options, health on. */
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { useTestDatabase } from './support/database.ts';
import pg from 'pg';
import { Worker } from '../src/bbm/worker.ts';
import type { Job } from '../src/bbm/types.ts';
import {
  createItems,
  drain,
  enqueue,
  expectEveryRowOnce,
  jobRanges,
  range,
  testWorker,
  touch,
} from './support/engine.ts';
import { startBbm } from './support/processes.ts';

const DEFAULTS_CONFIG = fileURLToPath(new URL('./fixtures/defaults.config.ts', import.meta.url));

describe('bbm run --concurrency N on a migration of N lanes, health on', () => {
  const db = useTestDatabase();

  // The lanes hold their connections between jobs; the health check, slow start and lane
  // steering need connections of their own beside them. Slow start grows the migration a lane
  // per health check, so within about a second all N lanes run.
  for (const lanes of [4, 8]) {
    it(`drains ${lanes} lanes to the end, every row once`, async () => {
      const { pool, url } = db();
      await createItems(pool, 'items', range(1, lanes * 25_000));
      await enqueue(pool, { name: 'fill', work: 'test.touch', table: 'items', batchSize: 100 });
      await pool.query(`UPDATE batched_background_migrations SET max_parallel_jobs = $1`, [lanes]);
      const worker = startBbm(['run', '--until-done', '--concurrency', String(lanes), '--config', DEFAULTS_CONFIG], {
        DATABASE_URL: url,
        BBM_LOG_LEVEL: 'info',
        BBM_LOG_FORMAT: 'json',
      });
      // A drain of a few seconds; a worker that stops making progress is killed and fails the test.
      const hung = setTimeout(() => worker.child.kill('SIGKILL'), 45_000);
      const { code } = await worker.exited.finally(() => clearTimeout(hung));
      expect(code, worker.output().slice(-2_000)).toBe(0);
      // Slow start reached every lane: some log line says the migration grew to N lanes.
      expect(worker.output()).toMatch(new RegExp(`"lanes_to":${lanes}`));
      await expectEveryRowOnce(pool, 'items', 'fill');
    }, 60_000);
  }
});

describe('a worker given a pool', () => {
  const db = useTestDatabase();

  it('refuses a pool smaller than its lanes, saying what it needs', () => {
    const small = new pg.Pool({ connectionString: db().url, max: 2 });
    try {
      expect(() => new Worker({ work: [touch], pool: small, concurrency: 4 })).toThrow(
        /concurrency 4 needs a pool of at least 4 connections.*has max 2/,
      );
    } finally {
      void small.end();
    }
  });
});

describe("a job under the session's own statement_timeout", () => {
  const db = useTestDatabase();

  it('keeps a tighter statement_timeout of the database or role, and splits a range that hits it', async () => {
    const { pool, name, url } = db();
    await createItems(pool, 'items', range(1, 20));
    await enqueue(pool, { name: 'slow', work: 'slow.touch', table: 'items', batchSize: 10, max: 20 });
    // A DBA's safety net, set on the database: every new session of the worker has it.
    await pool.query(`ALTER DATABASE ${name} SET statement_timeout = 300`);
    const limited = new pg.Pool({ connectionString: url, max: 4 });
    // A statement of 500 ms on a range of more than 5 rows: past the database's 300 ms limit.
    const slowTouch = {
      name: 'slow.touch',
      async do(job: Job) {
        if (job.end - job.start + 1n > 5n) await job.query('SELECT pg_sleep(0.5)');
        await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.column} BETWEEN $1 AND $2`, [
          job.start,
          job.end,
        ]);
      },
    };
    try {
      const worker = testWorker(limited, { work: [slowTouch] });
      await drain(worker);
      await worker.close();
    } finally {
      await limited.end();
    }
    await expectEveryRowOnce(pool, 'items', 'slow');
    // The two ranges of 10 hit the limit and were split in halves of 5, which ran.
    expect((await jobRanges(pool, 'slow', { all: true })).map((job) => job.max - job.min + 1)).toEqual([5, 5, 5, 5]);
  });
});
