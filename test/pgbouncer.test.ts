/**
 * Everything `bbm` does, through a real PgBouncer in transaction pooling with fewer server
 * connections than the fleet has lanes: every transaction may land on any server connection, and
 * nothing a session holds (a prepared statement, a session lock, a setting) is seen again by the
 * client that left it. Debian 12's PgBouncer 1.18 has no `max_prepared_statements`, as is the
 * case for Supavisor and RDS Proxy. Skipped without a pgbouncer (see support/pgbouncer.ts).
 */
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { Work } from '../src/bbm/types.ts';
import { afterAll, beforeAll, describe, expect, inject, it, onTestFinished } from 'vitest';
import { MigrationStatus } from '../src/store/codes.ts';
import { LOCK_NAMESPACE, QUIET_LOCK_KEY, QUIET_TAKE_WAIT_MS } from '../src/store/locks.ts';
import { performance } from 'node:perf_hooks';
import { bbm } from './support/cli.ts';
import { createTestDatabase, useTestDatabase, type TestDatabase } from './support/database.ts';
import {
  createItems,
  enqueue,
  expectEveryRowOnce,
  migrationRow,
  nextJob,
  range,
  testWorker,
} from './support/engine.ts';
import { pgBouncerAvailable, startPgBouncer, type PgBouncer } from './support/pgbouncer.ts';
import { createJobLog, runBbm, startBbm, TEST_CONFIG, waitFor, type BbmProcess } from './support/processes.ts';

const DEFAULTS_CONFIG = fileURLToPath(new URL('./fixtures/defaults.config.ts', import.meta.url));
const REHEARSE_CONFIG = fileURLToPath(new URL('./fixtures/rehearse.config.ts', import.meta.url));

const available = pgBouncerAvailable();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What a pooled server connection holding another client's statement or lock shows up as. */
const SESSION_LEFTOVERS = /already exists|42P05|invalid_table|does not exist/;

describe.skipIf(!available)('through PgBouncer in transaction pooling', () => {
  let bouncer: PgBouncer;
  beforeAll(async () => {
    bouncer = await startPgBouncer({ serverUrl: inject('adminUrl'), poolSize: 3 });
  });
  afterAll(async () => {
    await bouncer?.stop();
  });

  describe('a fresh database', () => {
    let db: TestDatabase | undefined;
    afterAll(async () => {
      await db?.drop();
    });

    it(
      'migrate from two processes at once, enqueue, then lanes over killed and restarted workers: every row once',
      { timeout: 120_000 },
      async () => {
        db = await createTestDatabase({ empty: true });
        const { pool } = db;
        const url = bouncer.urlFor(db.url);

        const migrations = await Promise.all([
          runBbm(['migrate', '--json'], { DATABASE_URL: url }),
          runBbm(['migrate', '--json'], { DATABASE_URL: url }),
        ]);
        for (const migrated of migrations) expect(migrated, migrated.output).toMatchObject({ code: 0 });
        // One applied the schema under the lock; the other found it up to date.
        const applied = migrations.map((m) => (JSON.parse(m.output) as { applied: string[] }).applied.length).sort();
        expect(applied[0]).toBe(0);
        expect(applied[1]).toBeGreaterThan(10);

        await createJobLog(pool);
        await createItems(pool, 'items', range(1, 30_000));
        await pool.query('DELETE FROM items WHERE id % 11 = 4');
        const enqueued = await runBbm(
          [
            'enqueue',
            ...['--name', 'pooled', '--work', 'test.touch', '--table', 'items', '--column', 'id'],
            ...['--batch-size', '150', '--lanes', '4', '--config', TEST_CONFIG],
          ],
          { DATABASE_URL: url },
        );
        expect(enqueued, enqueued.output).toMatchObject({ code: 0 });

        // Three workers of two lanes each; jobs sleep a little so that kills land mid-job.
        const env = { DATABASE_URL: url, BBM_TEST_JOB_SLEEP_MS: '5' };
        const start = () => startBbm(['run', '--config', TEST_CONFIG, '--concurrency', '2'], env);
        const outputs: string[] = [];
        const fleet: BbmProcess[] = [start(), start(), start()];
        onTestFinished(() => {
          for (const worker of fleet) worker.child.kill('SIGKILL');
        });
        const finishedJobs = async () =>
          (
            await pool.query<{ n: number }>(
              'SELECT count(*)::int AS n FROM batched_background_migration_jobs WHERE status = 2',
            )
          ).rows[0]!.n;
        const total = 30_000 / 150;
        // On a timeout, what the migration and the workers said.
        const explained = async <T>(waiting: Promise<T>): Promise<T> => {
          try {
            return await waiting;
          } catch (error) {
            const row = await migrationRow(pool, 'pooled');
            const said = [...outputs, ...fleet.map((w) => w.output())].join('\n').slice(-3000);
            throw new Error(`${(error as Error).message}\nmigration: ${JSON.stringify(row)}\nworkers:\n${said}`, {
              cause: error,
            });
          }
        };
        let killed = 0;
        for (let round = 0; round < 4; round += 1) {
          const before = await finishedJobs();
          await explained(waitFor(async () => (await finishedJobs()) >= before + 8, `jobs going on (round ${round})`));
          if ((await finishedJobs()) > total * 0.8) break;
          const victim = fleet[round % fleet.length]!;
          victim.child.kill('SIGKILL');
          await victim.exited;
          outputs.push(victim.output());
          killed += 1;
          fleet[round % fleet.length] = start();
        }
        expect(killed).toBeGreaterThanOrEqual(2);

        await explained(
          waitFor(
            async () => (await migrationRow(pool, 'pooled'))?.status === MigrationStatus.finished,
            'the migration to finish',
            90_000,
          ),
        );
        // Each of the fleet is up (it announced itself, so its signal handlers are in place) before SIGTERM.
        await explained(
          waitFor(async () => {
            const pids = fleet.map((worker) => worker.child.pid);
            const { rows } = await pool.query<{ n: number }>(
              'SELECT count(DISTINCT pid)::int AS n FROM batched_background_migration_workers WHERE pid = ANY($1)',
              [pids],
            );
            return rows[0]!.n === fleet.length;
          }, 'the fleet to announce itself'),
        );
        for (const worker of fleet) worker.child.kill('SIGTERM');
        for (const worker of fleet) {
          expect(await worker.exited, worker.output()).toEqual({ code: 0, signal: null });
          outputs.push(worker.output());
        }
        await expectEveryRowOnce(pool, 'items', 'pooled');
        const twice = await pool.query('SELECT range_start FROM job_log GROUP BY range_start HAVING count(*) > 1');
        expect(twice.rows).toEqual([]);
        // Lanes ran side by side, in more than one process.
        const pids = await pool.query<{ n: number }>('SELECT count(DISTINCT pid)::int AS n FROM job_log');
        expect(pids.rows[0]!.n).toBeGreaterThan(1);
        expect(outputs.join('\n')).not.toMatch(SESSION_LEFTOVERS);
      },
    );
  });

  describe('operating', () => {
    const db = useTestDatabase();

    async function prepare(pool: pg.Pool): Promise<void> {
      await createItems(pool, 'items', range(1, 500));
      await enqueue(pool, { name: 'watched', work: 'test.touch', table: 'items', batchSize: 50 });
    }

    it('bbm run with health on (the defaults, checked every 100 ms) drains a four-lane migration, every row once', async () => {
      const { pool, url: direct } = db();
      await createItems(pool, 'items', range(1, 20_000));
      await enqueue(pool, { name: 'fill', work: 'test.touch', table: 'items', batchSize: 100 });
      await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 4');
      // Health checks, lane steering and heartbeats go through the pooler beside the lanes.
      const run = await runBbm(['run', '--until-done', '--concurrency', '4', '--config', DEFAULTS_CONFIG], {
        DATABASE_URL: bouncer.urlFor(direct),
        BBM_LOG_LEVEL: 'warn',
      });
      expect(run, run.output).toMatchObject({ code: 0 });
      expect(run.output).not.toMatch(SESSION_LEFTOVERS);
      await expectEveryRowOnce(pool, 'items', 'fill');
    });

    it('a lane ends its run begun ahead before it waits for a controller: one server connection, bbm run with health on drains', async () => {
      // Each job's commit begins the next run (its take) in the same round trip; the lane then
      // waits for the health checks (every 100 ms) and lane steering on the controllers' pool.
      // Holding that take open meanwhile would hold the pooler's only server connection.
      const single = await startPgBouncer({ serverUrl: inject('adminUrl'), poolSize: 1 });
      onTestFinished(() => single.stop());
      const { pool, url: direct } = db();
      await createItems(pool, 'items', range(1, 3_000));
      await enqueue(pool, { name: 'single', work: 'test.touch', table: 'items', batchSize: 100 });
      const run = startBbm(['run', '--until-done', '--concurrency', '1', '--config', DEFAULTS_CONFIG], {
        DATABASE_URL: single.urlFor(direct),
      });
      const hung = sleep(30_000).then(() => 'hung' as const);
      const ended = await Promise.race([run.exited, hung]);
      if (ended === 'hung') run.child.kill('SIGKILL');
      expect(ended, run.output()).toEqual({ code: 0, signal: null });
      await expectEveryRowOnce(pool, 'items', 'single');
    });

    it('bbm rehearse through one server connection: its lock watch does not hold a sample open', async () => {
      const single = await startPgBouncer({ serverUrl: inject('adminUrl'), poolSize: 1 });
      onTestFinished(() => single.stop());
      const { pool, url: direct } = db();
      await createItems(pool, 'items', range(1, 5_000));
      await enqueue(pool, { name: 'rehearsed', work: 'rehearse.touch', table: 'items', batchSize: 500 });
      const run = startBbm(
        ['rehearse', '--name', 'rehearsed', '--samples', '4', '--json', '--config', REHEARSE_CONFIG],
        {
          DATABASE_URL: single.urlFor(direct),
        },
      );
      const hung = sleep(30_000).then(() => 'hung' as const);
      const ended = await Promise.race([run.exited, hung]);
      if (ended === 'hung') run.child.kill('SIGKILL');
      expect(ended, run.output()).toEqual({ code: 0, signal: null });
      const report = JSON.parse(run.output()) as { samples: unknown[]; projection: { walBytes: number } };
      expect(report.samples).toHaveLength(4);
      expect(report.projection.walBytes).toBeGreaterThan(0);
    });

    it('status --json, pause and resume', async () => {
      const { pool, url: direct } = db();
      await prepare(pool);
      const env = { DATABASE_URL: bouncer.urlFor(direct) };

      // The compiled CLI once each, then in-process a few more times: every statement meets server
      // connections other clients used before.
      const status = await runBbm(['status', '--json', '--config', TEST_CONFIG], env);
      expect(status, status.output).toMatchObject({ code: 0 });
      expect(JSON.parse(status.output)).toEqual([
        expect.objectContaining({ name: 'watched', status: 'active', tableName: 'items' }),
      ]);
      const paused = await runBbm(['pause', '--name', 'watched'], env);
      expect(paused, paused.output).toMatchObject({ code: 0, output: 'paused: watched\n' });
      expect((await migrationRow(pool, 'watched'))?.status).toBe(MigrationStatus.paused);
      const resumed = await runBbm(['resume', '--name', 'watched'], env);
      expect(resumed, resumed.output).toMatchObject({ code: 0, output: 'resumed: watched\n' });
      expect((await migrationRow(pool, 'watched'))?.status).toBe(MigrationStatus.active);

      for (let i = 0; i < 5; i += 1) {
        const again = await bbm(['status', '--json', '--config', TEST_CONFIG], env);
        expect(again, again.err).toMatchObject({ code: 0, err: '' });
        expect(await bbm(['pause', '--name', 'watched'], env)).toMatchObject({ code: 0, out: 'paused: watched\n' });
        expect(await bbm(['resume', '--name', 'watched'], env)).toMatchObject({ code: 0, out: 'resumed: watched\n' });
      }
      expect((await migrationRow(pool, 'watched'))?.status).toBe(MigrationStatus.active);
    });

    it('takes waiting behind a quiet round give their server connections back, so the round can commit (pool of 3)', async () => {
      const { url: direct } = db();
      const through = bouncer.urlFor(direct);
      const client = async () => {
        const c = new pg.Client({ connectionString: through });
        await c.connect();
        onTestFinished(() => c.end());
        return c;
      };
      // A quiet round: the quiet lock held exclusively, in a transaction (one server connection).
      const round = await client();
      await round.query('BEGIN');
      await round.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, QUIET_LOCK_KEY]);
      // Two lanes' takes wait behind it, each in a transaction on a server connection: the pool is full.
      const takes = await Promise.all([client(), client()]);
      const taken = takes.map((c) =>
        c.query<{ migration_id: string }>(
          `BEGIN; SELECT migration_id FROM bbm_take_job(ARRAY['test.touch'], '.*', NULL, 60000); ROLLBACK`,
        ),
      );
      await sleep(200);
      // The round's commit needs a server connection of its own: it gets one once the takes give up.
      const started = performance.now();
      const probe = await client();
      await probe.query('SELECT 1');
      expect(performance.now() - started).toBeLessThan(QUIET_TAKE_WAIT_MS + 5_000);
      for (const result of await Promise.all(taken)) {
        const take = (result as unknown as pg.QueryResult<{ migration_id: string }>[])[1]!;
        expect(take.rows).toEqual([{ migration_id: '0' }]);
      }
      await round.query('ROLLBACK');
    });

    it('a job past runTimeoutMs is cancelled at once, by the backend key PgBouncer gave (no pid of its own)', async () => {
      const { pool, url: direct } = db();
      await createItems(pool, 'items', range(1, 10));
      await enqueue(pool, { name: 'stuck', work: 'test.stuck', table: 'items', batchSize: 10 });
      const pooled = new pg.Pool({ connectionString: bouncer.urlFor(direct), max: 3 });
      onTestFinished(() => pooled.end());
      const stuck: Work = {
        name: 'test.stuck',
        async do(job) {
          await job.query('SELECT pg_sleep(5)');
        },
      };
      const worker = testWorker(pooled, { work: [stuck], runTimeoutMs: 300 });
      const run = await nextJob(worker);
      // Cancelled at the timeout; a cancel that missed would wait out the 5 s statement.
      expect(run).toMatchObject({ outcome: 'job_failed' });
      expect(run.error?.message).toMatch(/timed out|cancel/);
      expect(run.durationMs).toBeLessThan(3_000);
    });

    it('the dashboard serves the status page and its JSON API', async () => {
      const { pool, url: direct } = db();
      await prepare(pool);
      const dashboard = startBbm(['dashboard', '--port', '0', '--config', TEST_CONFIG], {
        DATABASE_URL: bouncer.urlFor(direct),
      });
      onTestFinished(() => void dashboard.child.kill('SIGKILL'));
      const base = await waitFor(
        async () => /status page on (http:\/\/\S+\/)/.exec(dashboard.output())?.[1],
        'the status page to listen',
      );

      for (let i = 0; i < 3; i += 1) {
        const page = await fetch(base);
        expect(page.status).toBe(200);
        expect(await page.text()).toContain('watched');
        const api = await fetch(new URL('/api/migrations', base));
        expect(api.status).toBe(200);
        expect(await api.json()).toEqual([expect.objectContaining({ name: 'watched', status: 'active' })]);
        const detail = await fetch(new URL('/migrations/watched', base));
        expect(detail.status).toBe(200);
        await sleep(20);
      }
      dashboard.child.kill('SIGTERM');
      expect(await dashboard.exited, dashboard.output()).toEqual({ code: 0, signal: null });
      expect(dashboard.output()).not.toMatch(SESSION_LEFTOVERS);
    });
  });
});
