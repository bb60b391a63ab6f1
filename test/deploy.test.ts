/** `bbm run` as users deploy it: the compiled command, the default options, health on. */
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { useTestDatabase } from './support/database.ts';
import pg from 'pg';
import { MigrationStatus } from '../src/store/codes.ts';
import { createPool } from '../src/store/db.ts';
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
import { startBbm, waitFor } from './support/processes.ts';

const DEFAULTS_CONFIG = fileURLToPath(new URL('./fixtures/defaults.config.ts', import.meta.url));

/**
 * The most jobs of a migration that ran at once while its first `share` of jobs (in the order they
 * finished) ran: at each such job's midpoint, the jobs whose take-to-finish span covers it. A lane
 * runs one job at a time, so this is how many lanes worked at once, read from the jobs' own rows.
 */
async function mostLanesAtOnce(pool: pg.Pool, name: string, share: number): Promise<number> {
  const { rows } = await pool.query<{ most: number }>(
    `WITH spans AS (
       SELECT j.started_at AS s, j.finished_at AS e, row_number() OVER (ORDER BY j.finished_at) AS n,
              count(*) OVER () AS total
       FROM batched_background_migration_jobs j JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id
       WHERE m.name = $1 AND j.finished_at IS NOT NULL
     )
     SELECT coalesce(max((SELECT count(*) FROM spans b WHERE b.s <= a.s + (a.e - a.s) / 2 AND b.e >= a.s + (a.e - a.s) / 2)), 0)::int AS most
     FROM spans a WHERE a.n <= a.total * $2::float8`,
    [name, share],
  );
  return rows[0]!.most;
}

describe('bbm run --concurrency N on a migration of N lanes, health on', () => {
  const db = useTestDatabase();

  // The lanes hold their connections between jobs; the health check, slow start and lane
  // steering need connections of their own beside them. Slow start grows the migration a lane
  // at a time on its jobs' evidence, and each lane given back is taken at once: the lanes a slow
  // start turned away sleep with the worker's default backoff (10 s), and must not wait it out.
  for (const lanes of [4, 8]) {
    it(`drains ${lanes} lanes to the end, every row once, all ${lanes} at work within its first quarter`, async () => {
      const { pool, url } = db();
      await createItems(pool, 'items', range(1, lanes * 25_000));
      await enqueue(pool, { name: 'fill', work: 'test.touch', table: 'items', batchSize: 100 });
      await pool.query(`UPDATE batched_background_migrations SET max_parallel_jobs = $1`, [lanes]);
      const worker = startBbm(['run', '--until-done', '--concurrency', String(lanes), '--config', DEFAULTS_CONFIG], {
        DATABASE_URL: url,
        BBM_LOG_LEVEL: 'info',
        BBM_LOG_FORMAT: 'json',
        // 250 jobs a lane of at least 5 ms: in one lane, longer than the first backoff's 8 s at the least.
        BBM_TEST_JOB_SLEEP_MS: '5',
      });
      // A drain of a few seconds; a worker that stops making progress is killed and fails the test.
      const hung = setTimeout(() => worker.child.kill('SIGKILL'), 45_000);
      const { code } = await worker.exited.finally(() => clearTimeout(hung));
      expect(code, worker.output().slice(-2_000)).toBe(0);
      // Slow start reached every lane: some log line says the migration grew to N lanes.
      expect(worker.output()).toMatch(new RegExp(`"lanes_to":${lanes}`));
      await expectEveryRowOnce(pool, 'items', 'fill');
      expect(await mostLanesAtOnce(pool, 'fill', 0.25)).toBeGreaterThanOrEqual(lanes);
    }, 60_000);
  }

  it('two processes of --concurrency 2 on a 4-lane migration both work it from its first half', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 100_000));
    await enqueue(pool, { name: 'fill', work: 'test.touch', table: 'items', batchSize: 100 });
    await pool.query(`UPDATE batched_background_migrations SET max_parallel_jobs = 4`);
    const env = { DATABASE_URL: url, BBM_TEST_JOB_SLEEP_MS: '10' };
    // 1,000 jobs of at least 10 ms: one process's 2 lanes alone take 5 s, less than the 8 s at the
    // least that the other's lanes, turned away by the slow start, would sleep on the default backoff.
    const workers = [0, 1].map(() =>
      startBbm(['run', '--until-done', '--concurrency', '2', '--config', DEFAULTS_CONFIG], env),
    );
    const hung = setTimeout(() => workers.forEach((w) => w.child.kill('SIGKILL')), 45_000);
    try {
      for (const worker of workers) {
        const { code } = await worker.exited;
        expect(code, worker.output().slice(-2_000)).toBe(0);
      }
    } finally {
      clearTimeout(hung);
    }
    await expectEveryRowOnce(pool, 'items', 'fill');
    // Four at once: both processes' lanes (each has two).
    expect(await mostLanesAtOnce(pool, 'fill', 0.5)).toBeGreaterThanOrEqual(4);
  }, 60_000);
});

describe('bbm run with the defaults (health on) on keys that are not integers', () => {
  const db = useTestDatabase();

  it('drains a uuid key and a (tenant_id, uuid) key inserted by plain SQL, in 4 lanes, every row once', async () => {
    const { pool, url } = db();
    await pool.query(`CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO u SELECT FROM generate_series(1, 20000)`);
    await pool.query(
      `CREATE TABLE c (tenant_id int NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0,
                       PRIMARY KEY (tenant_id, id))`,
    );
    await pool.query(`INSERT INTO c (tenant_id) SELECT i % 13 FROM generate_series(1, 20000) i`);
    // The README's INSERT, naming only the key: the work is the default config's BETWEEN on
    // job.start and job.end for the uuid, and job.range for the pair.
    await pool.query(
      `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
       VALUES ('by_uuid', 100, 'test.touch', 'u', 'id', 4), ('by_pair', 100, 'test.touch_range', 'c', 'tenant_id,id', 4)`,
    );
    const worker = startBbm(['run', '--until-done', '--concurrency', '4', '--config', DEFAULTS_CONFIG], {
      DATABASE_URL: url,
      BBM_LOG_LEVEL: 'warn',
    });
    const hung = setTimeout(() => worker.child.kill('SIGKILL'), 45_000);
    const { code } = await worker.exited.finally(() => clearTimeout(hung));
    expect(code, worker.output().slice(-2_000)).toBe(0);
    for (const table of ['u', 'c']) {
      const { rows } = await pool.query(`SELECT touched, count(*)::int AS n FROM ${table} GROUP BY touched`);
      expect(rows, table).toEqual([{ touched: 1, n: 20_000 }]);
    }
    const { rows } = await pool.query(`SELECT name, status FROM batched_background_migrations ORDER BY name`);
    expect(rows).toEqual([
      { name: 'by_pair', status: MigrationStatus.finished },
      { name: 'by_uuid', status: MigrationStatus.finished },
    ]);
  }, 60_000);
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

describe('bbm run waits for a database that is not ready', () => {
  const db = useTestDatabase();

  /** A role of its own (roles are the cluster's: a unique name), owning what the worker touches. */
  async function workerRole(pool: pg.Pool, url: string, settings: string): Promise<{ role: string; roleUrl: string }> {
    const role = `bbm_wait_${Math.random().toString(36).slice(2, 10)}`;
    await pool.query(`CREATE ROLE ${role} LOGIN PASSWORD 'wait-for-it' ${settings}`);
    await pool.query(`GRANT ALL ON SCHEMA public TO ${role}`);
    await pool.query(`GRANT ALL ON ALL TABLES IN SCHEMA public TO ${role}`);
    await pool.query(`GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO ${role}`);
    const roleUrl = new URL(url);
    roleUrl.username = role;
    roleUrl.password = 'wait-for-it';
    return { role, roleUrl: roleUrl.toString() };
  }

  it('retries "too many connections" at start-up, with one log line, and runs once it can connect', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 50));
    await enqueue(pool, { name: 'fill', work: 'test.touch', table: 'items', batchSize: 10 });
    // Every slot the role may have is taken (53300), as on a server at max_connections.
    const { role, roleUrl } = await workerRole(pool, url, 'CONNECTION LIMIT 0');
    try {
      const worker = startBbm(
        ['run', '--until-done', '--skip-migrate', '--metrics-port', '0', '--config', DEFAULTS_CONFIG],
        { DATABASE_URL: roleUrl, BBM_LOG_LEVEL: 'info', BBM_LOG_FORMAT: 'json' },
      );
      await waitFor(() => Promise.resolve(/waiting for the database/.test(worker.output())), 'the wait', 15_000);
      // A liveness probe sees a live process while it waits; readiness says it is not ready.
      const metricsUrl = /"url":"(http:[^"]+)\/metrics"/.exec(worker.output())?.[1];
      expect(metricsUrl, worker.output()).toBeDefined();
      expect((await fetch(`${metricsUrl}/healthz`)).status).toBe(200);
      expect((await fetch(`${metricsUrl}/readyz`)).status).toBe(503);
      await pool.query(`ALTER ROLE ${role} CONNECTION LIMIT -1`);
      const { code } = await worker.exited;
      expect(code, worker.output().slice(-2_000)).toBe(0);
      expect(worker.output().match(/waiting for the database/g)).toHaveLength(1);
      expect(worker.output()).toMatch(/the database is ready: starting/);
      await expectEveryRowOnce(pool, 'items', 'fill');
    } finally {
      await pool.query(`DROP OWNED BY ${role}; DROP ROLE ${role}`).catch(() => {});
    }
  });

  it('charges nothing to a migration while the server takes no writes (25006), and runs once it does', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 50));
    await enqueue(pool, { name: 'fill', work: 'test.touch', table: 'items', batchSize: 10 });
    // As a primary demoted to read-only would answer every write.
    const { role, roleUrl } = await workerRole(pool, url, '');
    await pool.query(`ALTER ROLE ${role} SET default_transaction_read_only = on`);
    try {
      const worker = startBbm(['run', '--skip-migrate', '--config', DEFAULTS_CONFIG], {
        DATABASE_URL: roleUrl,
        BBM_LOG_LEVEL: 'warn',
        BBM_LOG_FORMAT: 'json',
      });
      await waitFor(() => Promise.resolve(/read-only transaction/.test(worker.output())), 'a refused run', 15_000);
      // Longer than the worker's backoff lets it try a few times.
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      const before = await pool.query(
        `SELECT status, on_hold_until, run_errors FROM batched_background_migrations WHERE name = 'fill'`,
      );
      expect(before.rows[0]).toMatchObject({ on_hold_until: null, run_errors: 0 });
      await pool.query(`ALTER ROLE ${role} RESET default_transaction_read_only`);
      await pool.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1`, [role]);
      await waitFor(
        async () => (await pool.query(`SELECT 1 FROM items WHERE touched = 0`)).rowCount === 0,
        'the drain',
        20_000,
      );
      worker.child.kill('SIGTERM');
      expect((await worker.exited).code, worker.output().slice(-2_000)).toBe(0);
      const { rows } = await pool.query(`SELECT touched, count(*)::int AS n FROM items GROUP BY touched`);
      expect(rows).toEqual([{ touched: 1, n: 50 }]);
    } finally {
      await pool.query(`DROP OWNED BY ${role}; DROP ROLE ${role}`).catch(() => {});
    }
  });
});

describe('the connections a worker makes', () => {
  const db = useTestDatabase();

  it("gives its controllers the password of a pool built from fields (pg-pool keeps it off the pool's options)", async () => {
    const { pool, url } = db();
    const parsed = new URL(url);
    const fields = new pg.Pool({
      host: parsed.hostname,
      port: Number(parsed.port),
      user: decodeURIComponent(parsed.username),
      password: decodeURIComponent(parsed.password),
      database: parsed.pathname.slice(1),
      max: 2,
    });
    const worker = testWorker(fields, { work: [touch] });
    const running = worker.run();
    try {
      // The heartbeat runs on the controllers' pool: a row of this worker means they logged in.
      await waitFor(
        async () =>
          (await pool.query('SELECT 1 FROM batched_background_migration_workers WHERE id = $1', [worker.id]))
            .rowCount === 1,
        "the worker's heartbeat",
        10_000,
      );
    } finally {
      await worker.stop();
      await running;
      await fields.end();
    }
  });

  it('survives the server ending a connection that is checked out and idle', async () => {
    const { url, pool } = db();
    const own = createPool({ connectionString: url, max: 2 });
    try {
      const client = await own.connect();
      const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      await pool.query('SELECT pg_terminate_backend($1)', [rows[0]!.pid]);
      // Unheard, the client's 'error' would be an uncaught exception here, failing the run.
      await new Promise((resolve) => setTimeout(resolve, 300));
      await expect(client.query('SELECT 1')).rejects.toThrow();
      client.release(true);
      expect((await own.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await own.end();
    }
  });
});

describe('lanes with the default health options', () => {
  const db = useTestDatabase();

  it('a four-lane migration of a few seconds grows to all its lanes on its jobs, not on the clock', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 6_000));
    await enqueue(pool, { name: 'fill', work: 'paced.touch', table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 4');
    // Jobs that wait rather than compute (5 ms), so that four lanes on two cores do not slow each other.
    const ran = new Map<string, number>();
    const paced = (worker: string) => ({
      name: 'paced.touch',
      async do(job: Job) {
        await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.column} BETWEEN $1 AND $2`, [
          job.start,
          job.end,
        ]);
        await job.query('SELECT pg_sleep(0.005)');
        ran.set(worker, (ran.get(worker) ?? 0) + 1);
      },
    });
    const grown: number[] = [];
    const pools = [0, 1].map(() => new pg.Pool({ connectionString: url, max: 3 }));
    // The defaults but the table's own vacuum: health on, checkMs 10 s, slow start.
    const health = { autovacuum: false };
    const workers = pools.map((own, i) =>
      testWorker(own, {
        work: [paced(`w${i}`)],
        concurrency: 2,
        health,
        observers: [{ lanes: (event) => event.direction === 'grown' && grown.push(event.to) }],
      }),
    );
    try {
      const started = Date.now();
      await Promise.all(workers.map((worker) => worker.run({ untilDone: true })));
      const seconds = (Date.now() - started) / 1000;
      await expectEveryRowOnce(pool, 'items', 'fill');
      // 600 jobs, done within the first health check's 10 s: only growth on evidence reaches lane 4.
      expect(seconds).toBeLessThan(10);
      expect(grown, `drained in ${seconds} s`).toContain(4);
      // Both workers ran jobs (how many each is up to the race for lanes, not a promise).
      expect(ran.size).toBe(2);
    } finally {
      await Promise.all(workers.map((worker) => worker.close()));
      await Promise.all(pools.map((own) => own.end()));
    }
  });
});
