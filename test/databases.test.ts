/**
 * One fleet, many databases (`databases` in the config), run as operators run it: the compiled
 * `bbm` over several databases, one of them stopped and restarted; holds that stay in their
 * database; `database/name` addressing; twenty databases on one server sharing one process's lanes.
 */
import { execFile } from 'node:child_process';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { Fleet, type FleetParams } from '../src/bbm/fleet.ts';
import { createMetrics } from '../src/bbm/metrics.ts';
import { SharedLanes } from '../src/bbm/shared-lanes.ts';
import type { Work } from '../src/bbm/types.ts';
import { freePort, startEmbeddedPostgres, type EmbeddedCluster } from '../src/dev/embedded-postgres.ts';
import { migrateSchema } from '../src/store/apply-schema.ts';
import { createPool } from '../src/store/db.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { createTestDatabase, useOwnCluster, type TestDatabase } from './support/database.ts';
import { createItems, enqueue, expectEveryRowOnce, migrationRow, quiet, range } from './support/engine.ts';
import {
  BBM_BIN,
  createJobLog,
  runBbm,
  runBbmOnTerminal,
  startBbm,
  waitFor,
  type BbmProcess,
} from './support/processes.ts';
import { sentryEvents, sentryIngest } from './support/sentry.ts';

const FLEET_CONFIG = fileURLToPath(new URL('./fixtures/fleet.config.ts', import.meta.url));

/** The compiled `bbm`, as operators run it (the fleet's URLs come from its environment), to completion. */
function bbm(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BBM_BIN, ...args],
      { env: { ...process.env, BBM_LOG_LEVEL: 'warn', ...env } },
      (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  // Bounded: a server left crashed by a failed test may not stop cleanly.
  const bounded = (cleanup: () => Promise<unknown>) =>
    Promise.race([cleanup().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 10_000))]);
  for (const cleanup of cleanups.splice(0).reverse()) await bounded(cleanup);
});

async function testDatabase(): Promise<TestDatabase> {
  const database = await createTestDatabase();
  cleanups.push(() => database.drop());
  return database;
}

/** A table `items` of `rows` rows, the job log, and a migration `fill` over it. */
async function prepare(pool: pg.Pool, rows: number, batchSize: number, name = 'fill'): Promise<void> {
  await createItems(pool, 'items', range(1, rows));
  await createJobLog(pool);
  await enqueue(pool, { name, work: 'test.touch', table: 'items', batchSize });
}

const fleetEnv = (databases: Record<string, string>, more: Record<string, string> = {}) => ({
  BBM_TEST_DATABASES: JSON.stringify(databases),
  ...more,
});

/** Every range of the migration logged exactly once (the job log is written in the job's transaction). */
async function expectRangesOnce(pool: pg.Pool, name: string): Promise<void> {
  const { rows } = await pool.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM job_log WHERE migration = $1 GROUP BY range_start HAVING count(*) > 1',
    [name],
  );
  expect(rows).toEqual([]);
}

/**
 * A URL of the server of `url` whose database, which does not exist, is named as its password: the
 * server's error for it (`database "…" does not exist`) carries the password, as an error's text
 * may, for the masking to hide.
 */
function leakyUrl(url: string): { url: string; password: string } {
  const leaky = new URL(url);
  leaky.password ||= 'secret-pw';
  const password = decodeURIComponent(leaky.password);
  leaky.pathname = `/${leaky.password}`;
  return { url: leaky.toString(), password };
}

/** A fleet in this process as the tests run one: health holds off, quick polls, quiet, the schema already applied. */
function testFleet(params: Pick<FleetParams, 'databases' | 'work' | 'concurrency'> & Partial<FleetParams>): Fleet {
  return new Fleet({
    health: false,
    intervalMs: 20,
    maxIntervalMs: 100,
    startupJitterMs: 0,
    logger: quiet,
    migrate: false,
    ...params,
  });
}

const finished = async (pool: pg.Pool, name = 'fill') =>
  (await migrationRow(pool, name))?.status === MigrationStatus.finished;

describe('a fleet over several databases', () => {
  it('drains each exactly once in 2 processes while one database is down, the others finishing meanwhile, and that one once it is back', async () => {
    const [main, ci] = [await testDatabase(), await testDatabase()];
    const cluster: EmbeddedCluster = await startEmbeddedPostgres({ ephemeral: true });
    cleanups.push(() => cluster.stop());
    const sec = createPool({ connectionString: cluster.connectionString(), max: 2 });
    cleanups.push(() => sec.end());
    await migrateSchema(sec);
    for (const { pool } of [main, ci, { pool: sec }]) {
      await prepare(pool, 4000, 50);
      await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 2');
    }
    const env = fleetEnv(
      { main: main.url, ci: ci.url, sec: cluster.connectionString() },
      { BBM_TEST_JOB_SLEEP_MS: '20' },
    );
    const port = await freePort();
    const processes: BbmProcess[] = [['--metrics-port', String(port)], []].map((more) =>
      startBbm(['run', '--config', FLEET_CONFIG, '--until-done', '--concurrency', '2', ...more], env),
    );
    cleanups.push(async () => processes.forEach((p) => p.child.kill('SIGKILL')));

    await waitFor(async () => (await sec.query('SELECT count(*)::int AS n FROM job_log')).rows[0].n >= 5, 'sec jobs');
    const scrape = async () => (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    await waitFor(
      async () =>
        /bbm_jobs_total\{database="(main|ci|sec)",migration="fill",result="succeeded"\} [1-9]/.test(await scrape()),
      'a job of the process that serves metrics',
    );
    await cluster.crash();
    // While sec is down: its metrics say so, the others' series go on, and the page lists it as down.
    const metrics = await scrape();
    expect(metrics).toContain('bbm_database_up{database="sec"} 0');
    expect(metrics).toContain('bbm_database_up{database="main"} 1');
    const page = await (await fetch(`http://127.0.0.1:${port}/`)).text();
    expect(page).toMatch(/<tr data-database="sec"><td>sec<\/td><td><b>down<\/b>/);
    expect(page).toContain('href="/migrations/main%2Ffill"');
    await waitFor(
      async () => (await finished(main.pool)) && (await finished(ci.pool)),
      'main and ci to finish',
      60_000,
    );
    const down = await cluster
      .start()
      .then(() => false)
      .catch(() => true);
    expect(down).toBe(false);
    for (const p of processes) {
      const { code } = await p.exited;
      expect(code, p.output()).toBe(0);
    }
    for (const pool of [main.pool, ci.pool, sec]) {
      await expectEveryRowOnce(pool, 'items', 'fill');
      await expectRangesOnce(pool, 'fill');
    }
    // Both processes served the fleet (each database's migration has two lanes).
    const pids = new Set<number>();
    for (const pool of [main.pool, ci.pool, sec]) {
      for (const { pid } of (await pool.query<{ pid: number }>('SELECT DISTINCT pid FROM job_log')).rows) pids.add(pid);
    }
    expect(pids.size).toBe(2);
  });

  it('drains two-lane migrations in three databases with the defaults (health on), the process sharing its two lanes', async () => {
    const databases = [await testDatabase(), await testDatabase(), await testDatabase()];
    for (const { pool } of databases) {
      await createItems(pool, 'items', range(1, 3000));
      await enqueue(pool, { name: 'fill', work: 'test.touch', table: 'items', batchSize: 100 });
      await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 2');
    }
    const env = fleetEnv(Object.fromEntries(databases.map(({ url }, i) => [`db${i}`, url])), {
      BBM_TEST_BASE: 'defaults',
    });
    const drained = await bbm(['run', '--config', FLEET_CONFIG, '--until-done', '--concurrency', '2'], env);
    expect(drained.code, drained.stderr).toBe(0);
    for (const { pool } of databases) await expectEveryRowOnce(pool, 'items', 'fill');
  });

  it("holds a migration for its own database's trouble only: a vacuum of items in main holds main/fill, not ci/fill", async () => {
    const [main, ci] = [await testDatabase(), await testDatabase()];
    for (const { pool } of [main, ci]) await prepare(pool, 20_000, 5_000);
    await main.pool.query('ALTER TABLE items SET (autovacuum_enabled = false)');
    await main.pool.query('UPDATE items SET v = v + 1');
    const vacuumer = new pg.Client(main.url);
    await vacuumer.connect();
    cleanups.push(() => vacuumer.end());
    await vacuumer.query('SET vacuum_cost_delay = 50');
    await vacuumer.query('SET vacuum_cost_limit = 1');
    const { rows } = await vacuumer.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const vacuum = vacuumer.query('VACUUM items').catch((error: Error) => error);
    await waitFor(
      async () =>
        (await main.pool.query("SELECT 1 FROM pg_stat_progress_vacuum WHERE relid = 'items'::regclass")).rowCount,
      'the vacuum to start',
    );
    const env = fleetEnv({ main: main.url, ci: ci.url }, { BBM_TEST_HEALTH: '1' });
    const worker = startBbm(['run', '--config', FLEET_CONFIG, '--until-done', '--concurrency', '2'], env);
    cleanups.push(async () => worker.child.kill('SIGKILL'));

    await waitFor(() => finished(ci.pool), 'ci/fill to finish', 30_000);
    const status = await bbm(['status', '--config', FLEET_CONFIG, '--json'], env);
    expect(status.code, status.stderr).toBe(0);
    const reports = JSON.parse(status.stdout) as {
      name: string;
      database: string;
      status: string;
      holdReason: string | null;
    }[];
    expect(reports.map((r) => [r.name, r.database, r.status]).sort()).toEqual([
      ['ci/fill', 'ci', 'finished'],
      ['main/fill', 'main', 'active'],
    ]);
    expect(reports.find((r) => r.database === 'main')?.holdReason).toBe('vacuum on public.items');
    expect((await main.pool.query('SELECT count(*)::int AS n FROM job_log')).rows[0].n).toBe(0);

    await main.pool.query('SELECT pg_cancel_backend($1)', [rows[0]!.pid]);
    expect(await vacuum).toMatchObject({ code: '57014' });
    const { code } = await worker.exited;
    expect(code, worker.output()).toBe(0);
    await expectEveryRowOnce(main.pool, 'items', 'fill');
  });

  it('addresses a migration as database/name, finds a plain name in the one database that has it, and refuses an ambiguous one', async () => {
    const [main, ci] = [await testDatabase(), await testDatabase()];
    for (const { pool } of [main, ci]) await prepare(pool, 10, 5);
    await enqueue(main.pool, { name: 'only_main', work: 'test.touch', table: 'items', batchSize: 5 });
    const env = fleetEnv({ main: main.url, ci: ci.url });
    const run = (...args: string[]) => bbm([...args, '--config', FLEET_CONFIG], env);

    const ambiguous = await run('pause', '--name', 'fill');
    expect(ambiguous.code).toBe(2);
    expect(ambiguous.stderr).toBe('bbm pause: fill is in several databases: name one of main/fill, ci/fill\n');

    expect((await run('pause', '--name', 'ci/fill')).code).toBe(0);
    expect((await migrationRow(ci.pool, 'fill'))?.status).toBe(MigrationStatus.paused);
    expect((await migrationRow(main.pool, 'fill'))?.status).toBe(MigrationStatus.active);

    expect((await run('pause', '--name', 'only_main')).code).toBe(0);
    expect((await migrationRow(main.pool, 'only_main'))?.status).toBe(MigrationStatus.paused);

    const missing = await run('resume', '--name', 'nowhere');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('bbm resume: no migration named "nowhere" in main, ci\n');

    const table = await run('status');
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/main\/fill\s+active/);
    expect(table.stdout).toMatch(/ci\/fill\s+paused/);
    const one = await run('status', '--database', 'ci', '--json');
    expect((JSON.parse(one.stdout) as { name: string }[]).map((r) => r.name)).toEqual(['ci/fill']);

    const unknown = await run('status', '--database', 'sec');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('--database sec: no such database; the config names main, ci');
    const enqueueAnywhere = await run('enqueue', '--name', 'new', '--work', 'test.touch', '--table', 'items');
    expect(enqueueAnywhere.code).toBe(2);
    expect(enqueueAnywhere.stderr).toContain('pass --database NAME or --name DATABASE/NAME');
    const enqueued = await run(
      'enqueue',
      '--name',
      'ci/new',
      '--work',
      'test.touch',
      '--table',
      'items',
      '--column',
      'id',
      '--batch-size',
      '5',
    );
    expect(enqueued.code, enqueued.stderr).toBe(0);
    expect(await migrationRow(ci.pool, 'new')).toBeDefined();
    expect(await migrationRow(main.pool, 'new')).toBeUndefined();

    // Without --name: every migration of every database.
    const brake = await run('pause', '--json');
    expect(brake.code, brake.stderr).toBe(0);
    expect((JSON.parse(brake.stdout) as { paused: string[] }).paused.sort()).toEqual(['ci/new', 'main/fill']);
    expect((await migrationRow(main.pool, 'fill'))?.status).toBe(MigrationStatus.paused);

    // A database the config names but cannot be reached: the others are still shown, and it is named.
    const broken = fleetEnv({ main: main.url, ci: ci.url, gone: 'postgres://nobody:secret-pw@127.0.0.1:1/none' });
    const partial = await bbm(['status', '--config', FLEET_CONFIG], broken);
    expect(partial.code).toBe(1);
    expect(partial.stdout).toMatch(/main\/fill/);
    expect(partial.stderr).toContain('bbm status: gone:');
    expect(partial.stderr).not.toContain('secret-pw');
  });

  it('refuses --name DATABASE/NAME that contradicts --database (exit 2), and takes it when they agree', async () => {
    const [main, ci] = [await testDatabase(), await testDatabase()];
    for (const { pool } of [main, ci]) await prepare(pool, 10, 5);
    const run = (...args: string[]) =>
      bbm([...args, '--config', FLEET_CONFIG], fleetEnv({ main: main.url, ci: ci.url }));

    const contradicting = await run('pause', '--database', 'main', '--name', 'ci/fill');
    expect(contradicting.code).toBe(2);
    expect(contradicting.stderr).toBe(
      'bbm pause: --name ci/fill is a migration of database ci, but --database says main: pass one of them\n',
    );
    expect((await migrationRow(ci.pool, 'fill'))?.status).toBe(MigrationStatus.active);

    const agreeing = await run('pause', '--database', 'ci', '--name', 'ci/fill');
    expect(agreeing.code, agreeing.stderr).toBe(0);
    expect((await migrationRow(ci.pool, 'fill'))?.status).toBe(MigrationStatus.paused);
    expect((await migrationRow(main.pool, 'fill'))?.status).toBe(MigrationStatus.active);
  });

  it('names the migration database/name, with its database, in the JSON of enqueue, set, approve, finalize, retry and delete, as status does', async () => {
    const [main, ci] = [await testDatabase(), await testDatabase()];
    for (const { pool } of [main, ci]) await prepare(pool, 10, 5);
    await ci.pool.query('UPDATE batched_background_migrations SET status = $1', [MigrationStatus.failed]);
    const env = fleetEnv({ main: main.url, ci: ci.url });
    const json = async (code: number, ...args: string[]) => {
      const result = await bbm([...args, '--config', FLEET_CONFIG, '--json'], env);
      expect(result.code, result.stderr).toBe(code);
      return JSON.parse(result.stdout) as Record<string, unknown>;
    };
    const enqueueFlags = ['--work', 'test.touch', '--table', 'items', '--column', 'id', '--batch-size', '5'];
    const at = { database: 'ci' };

    expect(await json(0, 'enqueue', '--name', 'ci/gated', ...enqueueFlags, '--needs-approval')).toMatchObject({
      name: 'ci/gated',
      ...at,
    });
    const refused = await bbm(['finalize', '--name', 'ci/gated', '--config', FLEET_CONFIG, '--json'], env);
    expect(refused.code, refused.stderr).toBe(1);
    expect(JSON.parse(refused.stdout)).toMatchObject({ name: 'ci/gated', ...at, finished: false });
    expect(refused.stdout + refused.stderr).toContain('approve it first (bbm approve --name ci/gated)');
    expect(await json(0, 'approve', '--name', 'ci/gated', '--by', 'tester')).toMatchObject({
      approved: 'ci/gated',
      ...at,
      approvedBy: 'tester',
    });
    expect(await json(0, 'finalize', '--name', 'ci/gated')).toMatchObject({
      name: 'ci/gated',
      ...at,
      status: 'finished',
    });
    expect(await json(0, 'retry', '--name', 'ci/fill')).toMatchObject({ retried: 'ci/fill', ...at });
    expect(await json(0, 'set', '--name', 'ci/fill', '--batch-size', '2')).toMatchObject({
      name: 'ci/fill',
      ...at,
      batchSize: 2,
    });
    await json(0, 'pause', '--name', 'ci/fill');
    expect(await json(0, 'delete', '--name', 'ci/fill')).toMatchObject({ deleted: 'ci/fill', ...at });

    // One database given by URL: the names as they are, and no database.
    const single = await bbm(['set', '--name', 'fill', '--batch-size', '3', '--database-url', main.url, '--json'], {});
    expect(single.code, single.stderr).toBe(0);
    const report = JSON.parse(single.stdout) as Record<string, unknown>;
    expect(report).toMatchObject({ name: 'fill', batchSize: 3 });
    expect(report).not.toHaveProperty('database');
  });

  it("tags finalize's log lines with database, as the worker's, and its Sentry events, as observerFor's", async () => {
    const [main, ci] = [await testDatabase(), await testDatabase()];
    for (const { pool } of [main, ci]) await prepare(pool, 40, 10);
    await ci.pool.query('UPDATE batched_background_migrations SET status = $1', [MigrationStatus.paused]);
    const ingest = await sentryIngest();
    cleanups.push(() => ingest.close());
    const env = fleetEnv({ main: main.url, ci: ci.url }, { SENTRY_DSN: ingest.dsn, BBM_TEST_FAIL_AT: '25' });

    const finalized = await bbm(
      ['finalize', '--name', 'ci/fill', '--config', FLEET_CONFIG, '--log-format', 'json'],
      env,
    );
    expect(finalized.code, finalized.stderr).toBe(1);
    const lines = finalized.stderr
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { msg: string; database?: string });
    expect(lines.map((line) => line.msg)).toContain(
      'fill was paused: finalizing runs it anyway, and pauses it again if it stops before the end',
    );
    for (const line of lines) expect(line, line.msg).toMatchObject({ database: 'ci' });
    const events = sentryEvents(ingest.envelopes);
    expect(events.map((event) => (event.tags as Record<string, string>).outcome)).toContain('migration_failed');
    for (const event of events) expect(event.tags).toMatchObject({ database: 'ci', bbm_name: 'fill' });
  });

  it('pauses and resumes every database it can reach without --name, listing one it cannot in the JSON as migrate does, password masked (exit 1)', async () => {
    const main = await testDatabase();
    await prepare(main.pool, 10, 5);
    // Listed first: the database that fails comes before the one that is changed.
    const gone = leakyUrl(main.url);
    const env = fleetEnv({ gone: gone.url, main: main.url });
    const json = (command: string) => bbm([command, '--config', FLEET_CONFIG, '--json'], env);
    // The error as stderr shows it (describeError: SQLSTATE; no statement: it came from connecting).
    const goneError = {
      database: 'gone',
      error: expect.stringMatching(/^database "\*\*\*" does not exist \(SQLSTATE 3D000\)$/) as unknown,
    };

    const status = await json('status');
    expect(status.code).toBe(1);
    expect(JSON.parse(status.stdout)).toEqual([
      expect.objectContaining({ name: 'main/fill', database: 'main', status: 'active' }),
      goneError,
    ]);
    const paused = await json('pause');
    expect(paused.code).toBe(1);
    expect(JSON.parse(paused.stdout)).toEqual({ paused: ['main/fill'], errors: [goneError] });
    expect((await migrationRow(main.pool, 'fill'))?.status).toBe(MigrationStatus.paused);
    const resumed = await json('resume');
    expect(resumed.code).toBe(1);
    expect(JSON.parse(resumed.stdout)).toEqual({ resumed: ['main/fill'], errors: [goneError] });
    expect((await migrationRow(main.pool, 'fill'))?.status).toBe(MigrationStatus.active);
    // migrate lists it alike.
    const migrated = await json('migrate');
    expect(migrated.code).toBe(1);
    expect(JSON.parse(migrated.stdout)).toEqual([goneError, { database: 'main', applied: [] }]);

    for (const [command, result] of Object.entries({ status, pause: paused, resume: resumed, migrate: migrated })) {
      expect(result.stderr, command).toContain(`bbm ${command}: gone: database "***" does not exist`);
      expect(result.stdout + result.stderr, command).not.toContain(gone.password);
    }
  });

  it('reports a database bbm migrate could not migrate in its JSON, with its error (password masked), and exits 1', async () => {
    const main = await testDatabase();
    const gone = 'postgres://nobody:secret-pw@127.0.0.1:1/none';
    const migrated = await bbm(['migrate', '--config', FLEET_CONFIG, '--json'], fleetEnv({ main: main.url, gone }));
    expect(migrated.code).toBe(1);
    expect(JSON.parse(migrated.stdout)).toEqual([
      { database: 'main', applied: [] },
      { database: 'gone', error: expect.stringMatching(/ECONNREFUSED/) as unknown },
    ]);
    expect(migrated.stdout + migrated.stderr).not.toContain('secret-pw');
  });

  it('is ready (/readyz 200) while any of its databases answers, listing each; 503 when none does', async () => {
    const main = await testDatabase();
    const gone = 'postgres://nobody:secret-pw@127.0.0.1:1/none';
    const serve = async (databases: Record<string, string>) => {
      const port = await freePort();
      const worker = startBbm(['run', '--config', FLEET_CONFIG, '--metrics-port', String(port)], fleetEnv(databases));
      cleanups.push(async () => worker.child.kill('SIGKILL'));
      const readyz = async () => {
        const response = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
        return response && { status: response.status, body: await response.text() };
      };
      await waitFor(async () => (await readyz()) !== undefined, 'the ops server');
      return { readyz, port, output: () => worker.output() };
    };

    // A database whose error carries its password: /readyz and the status page show it masked.
    const leaky = leakyUrl(main.url);
    const some = await serve({ gone: leaky.url, main: main.url });
    const ready = await some.readyz();
    expect(ready?.status).toBe(200);
    expect(ready?.body).toBe(
      'ready: 1 of 2 databases answer\ngone: unreachable: database "***" does not exist\nmain: ready\n',
    );
    const page = await (await fetch(`http://127.0.0.1:${some.port}/`)).text();
    expect(page).toContain(
      '<tr data-database="gone"><td>gone</td><td><b>down</b></td><td class="note">database &#34;***&#34; does not exist</td></tr>',
    );
    expect(page).not.toContain(leaky.password);
    // And so do its log lines, which quote the server's error (JSON lines, as a deployment writes them).
    await waitFor(async () => some.output().includes('does not exist'), "the log line of gone's error");
    expect(some.output()).toContain('database \\"***\\" does not exist');
    expect(some.output()).not.toContain(leaky.password);

    const none = await serve({ gone, also: 'postgres://nobody@127.0.0.1:1/also' });
    const unready = await none.readyz();
    expect(unready?.status).toBe(503);
    expect(unready?.body).toMatch(/^not ready: no database answers\ngone: unreachable: .*\nalso: unreachable: .*\n$/);
  });

  it('enqueues the passes of a schedule limited to one database in that database, and none elsewhere', async () => {
    const [main, ci] = [await testDatabase(), await testDatabase()];
    for (const { pool } of [main, ci]) {
      await createItems(pool, 'items', range(1, 20));
      await createJobLog(pool);
    }
    const env = fleetEnv(
      { main: main.url, ci: ci.url },
      {
        BBM_TEST_SCHEDULES: JSON.stringify([
          { name: 's', work: 'test.touch', table: 'items', column: 'id', batchSize: 5, every: '1h', databases: ['ci'] },
        ]),
      },
    );
    const drained = await bbm(['run', '--config', FLEET_CONFIG, '--until-done'], env);
    expect(drained.code, drained.stderr).toBe(0);
    const passes = async (pool: pg.Pool) =>
      (await pool.query<{ name: string }>("SELECT name FROM batched_background_migrations WHERE name LIKE 's@%'")).rows;
    expect(await passes(main.pool)).toEqual([]);
    const inCi = await passes(ci.pool);
    expect(inCi).toHaveLength(1);
    await expectEveryRowOnce(ci.pool, 'items', inCi[0]!.name);
  });

  it('ends a drain without a database it cannot serve (exit 1, named), the others drained; a config error exits 2 at once', async () => {
    const [main, ci] = [await testDatabase(), await testDatabase()];
    for (const { pool } of [main, ci]) await prepare(pool, 200, 50);
    const missing = new URL(main.url);
    missing.pathname = '/no_such_database';
    const env = fleetEnv({ main: main.url, ci: ci.url, gone: missing.toString() });
    const started = Date.now();
    const drained = await bbm(['run', '--config', FLEET_CONFIG, '--until-done'], env);
    expect(drained.code, drained.stderr).toBe(1);
    expect(drained.stderr).toContain(
      'bbm run: database gone could not be served: database "no_such_database" does not exist',
    );
    for (const { pool } of [main, ci]) await expectEveryRowOnce(pool, 'items', 'fill');

    const every = (schedule: Record<string, unknown>) => ({
      ...fleetEnv({ main: main.url, ci: ci.url }),
      BBM_TEST_SCHEDULES: JSON.stringify([
        { name: 's', work: 'test.touch', table: 'items', column: 'id', batchSize: 5, every: '1h', ...schedule },
      ]),
    });
    const badEvery = await bbm(['run', '--config', FLEET_CONFIG, '--until-done'], every({ every: 'bogus' }));
    expect(badEvery.code).toBe(2);
    expect(badEvery.stderr).toContain('every "bogus"');
    const elsewhere = await bbm(['run', '--config', FLEET_CONFIG, '--until-done'], every({ databases: ['sec'] }));
    expect(elsewhere.code).toBe(2);
    expect(elsewhere.stderr).toContain("bbm run: schedule s: sec is not among the config's databases");
    // A schedule of main only, with --database ci: accepted, and no pass of it in ci.
    const onlyMain = await bbm(
      ['run', '--config', FLEET_CONFIG, '--until-done', '--database', 'ci'],
      every({ databases: ['main'] }),
    );
    expect(onlyMain.code, onlyMain.stderr).toBe(0);
    expect((await ci.pool.query("SELECT 1 FROM batched_background_migrations WHERE name LIKE 's@%'")).rowCount).toBe(0);
    expect(Date.now() - started).toBeLessThan(30_000);
  });

  it('refuses a config whose databases are malformed, naming the entry and never a URL', async () => {
    const env = (databases: unknown) => ({ BBM_TEST_DATABASES: JSON.stringify(databases) });
    const empty = await bbm(['status', '--config', FLEET_CONFIG], env({ main: '' }));
    expect(empty.code).toBe(2);
    expect(empty.stderr).toContain('databases.main has no URL');
    const badName = await bbm(['status', '--config', FLEET_CONFIG], env({ 'Main/x': 'postgres://u:pw-123@h/d' }));
    expect(badName.code).toBe(2);
    expect(badName.stderr).toContain('"Main/x" is not a database name');
    expect(badName.stderr).not.toContain('pw-123');
  });
});

describe('twenty databases on one server', () => {
  const own = useOwnCluster({ poolMax: 2 });

  it('each with a small migration, all finished by one process sharing its lanes, none starved', async () => {
    const { cluster, pool: admin } = own();
    const databases: Record<string, string> = {};
    const pools: pg.Pool[] = [];
    for (let i = 0; i < 20; i += 1) {
      const name = `tenant_${String(i).padStart(2, '0')}`;
      await admin.query(`CREATE DATABASE ${name}`);
      const pool = createPool({ connectionString: cluster.connectionString(name), max: 2 });
      cleanups.push(() => pool.end());
      await migrateSchema(pool);
      await prepare(pool, 600, 20);
      pools.push(pool);
      databases[name.replace('_', '-')] = cluster.connectionString(name);
    }
    const started = Date.now();
    const { code, output } = await runBbm(
      ['run', '--config', FLEET_CONFIG, '--until-done', '--concurrency', '4'],
      fleetEnv(databases, { BBM_TEST_JOB_SLEEP_MS: '10' }),
    );
    expect(code, output).toBe(0);
    const finishedAfter: number[] = [];
    for (const pool of pools) {
      await expectEveryRowOnce(pool, 'items', 'fill');
      const { rows } = await pool.query<{ at: Date }>(
        "SELECT finished_at AS at FROM batched_background_migrations WHERE name = 'fill'",
      );
      finishedAfter.push(rows[0]!.at.getTime() - started);
    }
    const first = Math.min(...finishedAfter);
    const last = Math.max(...finishedAfter);
    expect(last, `finished after ${finishedAfter.join(', ')} ms`).toBeLessThanOrEqual(2 * first);
  });
});

describe('a fleet in one process', () => {
  it('runs at most concurrency jobs at once in all its databases, and a big migration does not hold back small ones', async () => {
    const [big, ...small] = [await testDatabase(), await testDatabase(), await testDatabase(), await testDatabase()];
    await createItems(big.pool, 'items', range(1, 2000));
    await enqueue(big.pool, { name: 'fill', work: 'counted', table: 'items', batchSize: 20 });
    await big.pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 4');
    for (const { pool } of small) {
      await createItems(pool, 'items', range(1, 200));
      await enqueue(pool, { name: 'fill', work: 'counted', table: 'items', batchSize: 20 });
    }
    let running = 0;
    let most = 0;
    const counted: Work = {
      name: 'counted',
      async do(job) {
        running += 1;
        most = Math.max(most, running);
        try {
          await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE id BETWEEN $1 AND $2`, [
            job.start,
            job.end,
          ]);
          await job.query('SELECT pg_sleep(0.005)');
        } finally {
          running -= 1;
        }
      },
    };
    const metrics = createMetrics({ databases: new Map() });
    const fleet = testFleet({
      databases: [big, ...small].map(({ url }, i) => ({ name: i === 0 ? 'big' : `small-${i}`, url })),
      observersFor: (database) => [metrics.observerFor(database)],
      work: [counted],
      concurrency: 2,
    });
    await fleet.run({ untilDone: true });
    expect(most).toBe(2);
    const finishedAt = async (pool: pg.Pool) =>
      (
        await pool.query<{ at: Date }>(
          "SELECT finished_at AS at FROM batched_background_migrations WHERE name = 'fill'",
        )
      ).rows[0]!.at.getTime();
    const bigAt = await finishedAt(big.pool);
    for (const { pool } of small) {
      await expectEveryRowOnce(pool, 'items', 'fill');
      expect(await finishedAt(pool)).toBeLessThan(bigAt);
    }
    await expectEveryRowOnce(big.pool, 'items', 'fill');
    // The contention for the process's lanes, by database: each waited for them.
    const waits = await metrics.registry.getSingleMetric('bbm_process_lane_wait_seconds_total')!.get();
    expect(waits.values.map((value) => value.labels.database).sort()).toEqual(['big', 'small-1', 'small-2', 'small-3']);
    for (const { value } of waits.values) expect(value).toBeGreaterThan(0.01);
  });
});

/**
 * A TCP proxy to `port` that can turn silent: it then cuts the connections it carries and holds
 * new ones without a byte, as a server behind a partition does (a connect waits for its timeout).
 */
async function silencingProxy(port: number): Promise<{
  url: (url: string) => string;
  silence: () => void;
  restore: () => void;
  close: () => Promise<void>;
}> {
  let silent = false;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => {});
    if (silent) return;
    const upstream = connect(port, '127.0.0.1');
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: own } = server.address() as AddressInfo;
  return {
    url: (url) => url.replace(`:${port}/`, `:${own}/`),
    silence: () => {
      silent = true;
      for (const socket of sockets) socket.destroy();
    },
    /** Speaks again: the connections it held silent are cut (their connects fail at once). */
    restore: () => {
      silent = false;
      for (const socket of sockets) socket.destroy();
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe('bbm run on a terminal', () => {
  it("shows each database's migrations live, as database/name, and their changes", async () => {
    const [main, ci] = [await testDatabase(), await testDatabase()];
    await prepare(main.pool, 200, 10);
    await prepare(ci.pool, 300, 10);
    const { code, text } = await runBbmOnTerminal(
      ['run', '--until-done', '--config', FLEET_CONFIG],
      fleetEnv({ main: main.url, ci: ci.url }, { BBM_TEST_BASE: 'defaults', BBM_TEST_JOB_SLEEP_MS: '50' }),
    );
    expect(code).toBe(0);
    expect(text).toMatch(/^main\/fill .* jobs/m);
    expect(text).toMatch(/^ci\/fill .* jobs/m);
    expect(text).toMatch(/^main\/fill: running → finished \(20 jobs/m);
    expect(text).toMatch(/^ci\/fill: running → finished \(30 jobs/m);
    expect(await finished(main.pool)).toBe(true);
    expect(await finished(ci.pool)).toBe(true);
  });
});

describe('a database that falls silent', () => {
  it(
    "holds none of the process's lanes while its connections wait to time out: the other database drains meanwhile",
    { timeout: 60_000 },
    async () => {
      const [main, silent] = [await testDatabase(), await testDatabase()];
      for (const { pool } of [main, silent]) {
        await createItems(pool, 'items', range(1, 400));
        await enqueue(pool, { name: 'fill', work: 'slowed', table: 'items', batchSize: 10 });
      }
      const proxy = await silencingProxy(Number(new URL(silent.url).port));
      cleanups.push(() => proxy.close());
      const slowed: Work = {
        name: 'slowed',
        async do(job) {
          await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE id BETWEEN $1 AND $2`, [
            job.start,
            job.end,
          ]);
          await job.query('SELECT pg_sleep(0.02)');
        },
      };
      const fleet = testFleet({
        databases: [
          { name: 'silent', url: proxy.url(silent.url) },
          { name: 'main', url: main.url },
        ],
        work: [slowed],
        concurrency: 2,
      });
      const running = fleet.run();
      cleanups.push(() => fleet.stop({ abort: true }).then(() => running));
      // Both served, then the one behind the proxy falls silent mid-drain.
      await waitFor(
        async () => (await migrationRow(silent.pool, 'fill'))?.status === MigrationStatus.running,
        'silent/fill to start',
      );
      await waitFor(
        async () => (await migrationRow(main.pool, 'fill'))?.status === MigrationStatus.running,
        'main/fill to start',
      );
      proxy.silence();
      const silencedAt = Date.now();

      // 40 jobs of 20 ms in 2 lanes: under a second with the lanes; a connect that waits out its
      // 15-s timeout holding one of the process's lanes leaves main one lane at most, in turns.
      await waitFor(
        async () => (await migrationRow(main.pool, 'fill'))?.status === MigrationStatus.finished,
        'main/fill to finish',
        14_000,
      );
      expect(Date.now() - silencedAt).toBeLessThan(14_000);
      await expectEveryRowOnce(main.pool, 'items', 'fill');
      proxy.restore();
      await fleet.stop({ abort: true });
      await running;
    },
  );
});

describe('shared lanes', () => {
  it('let a database alone use them all, and give a free lane to the databases that wait in turn', async () => {
    const lanes = new SharedLanes(2);
    const busy = lanes.for('busy');
    const quiet = lanes.for('quiet');
    const never = new AbortController().signal;
    expect(await busy.take(never)).toBe(true);
    expect(await busy.take(never)).toBe(true);
    expect(lanes.inUse).toBe(2);
    // busy queues three more lanes before quiet asks for one: busy gets the first lane free, quiet the second.
    const order: string[] = [];
    const waits = [
      busy.take(never).then(() => order.push('busy')),
      busy.take(never).then(() => order.push('busy')),
      busy.take(never).then(() => order.push('busy')),
    ];
    const quietWait = quiet.take(never).then(() => order.push('quiet'));
    expect(busy.othersWait).toBe(true);
    expect(quiet.othersWait).toBe(true);
    busy.give();
    await Promise.resolve();
    busy.give();
    await Promise.all([quietWait, waits[0]]);
    expect(order).toEqual(['busy', 'quiet']);
    // A lane abandoned while it waits is not granted (nor lost).
    const stop = new AbortController();
    const abandoned = lanes.for('other').take(stop.signal);
    stop.abort();
    expect(await abandoned).toBe(false);
    for (const holder of [busy, quiet, busy, busy]) holder.give();
    await Promise.all(waits);
    expect(lanes.inUse).toBe(0);
    expect(() => busy.give()).toThrow('given back twice');
  });
});
