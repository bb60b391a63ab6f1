/** `bbm run` as users deploy it: the compiled command, the default options, health on. */
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { useTestDatabase } from './support/database.ts';
import pg from 'pg';
import { Worker } from '../src/bbm/worker.ts';
import { createItems, enqueue, expectEveryRowOnce, range, touch } from './support/engine.ts';
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
