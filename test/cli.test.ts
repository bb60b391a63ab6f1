import { readFileSync } from 'node:fs';
import pg from 'pg';
import { describe, expect, inject, it } from 'vitest';
import { MigrationStatus } from '../src/store/codes.ts';
import { bbm } from './support/cli.ts';
import { createTestDatabase, useTestDatabase } from './support/database.ts';
import { createItems, enqueue, migrationRow, range } from './support/engine.ts';
import { TEST_CONFIG } from './support/processes.ts';

describe('bbm without a database', () => {
  it('says how to give one and exits 2', async () => {
    const result = await bbm(['status']);
    expect(result.code).toBe(2);
    expect(result.err).toMatch(/no database: set DATABASE_URL \(or PGHOST, PGDATABASE, …\) or pass --database-url/);
  });

  it.each([
    [['frobnicate'], /unknown command "frobnicate"/],
    [['status', '--bogus'], /^bbm status: unknown option --bogus\n\nRun `bbm status --help` for its options\.\n$/],
    [['--bogus'], /^bbm: unknown option --bogus\n\nRun `bbm --help` for usage\.\n$/],
    [['enqueue', '--name'], /^bbm enqueue: --name needs a value\n\nRun `bbm enqueue --help` for its options\.\n$/],
    [['status', '--json=yes'], /^bbm status: --json takes no value\n/],
    [['status', 'extra'], /^bbm: unexpected argument "extra"\n\nRun `bbm status --help` for its options\.\n$/],
    [
      ['pause', '--watch'],
      /^bbm pause: --watch is not an option of this command\n\nRun `bbm pause --help` for its options\.\n$/,
    ],
    [['run', '--database-url', 'postgres://x@127.0.0.1:1/x'], /bbm run needs work functions/],
    [
      ['status', '--config', 'nope.config.ts', '--database-url', 'postgres://x@127.0.0.1:1/x'],
      /config file nope.config.ts does not exist/,
    ],
  ])('rejects %j with exit 2', async (args, message) => {
    const result = await bbm(args);
    expect(result.code).toBe(2);
    expect(result.err).toMatch(message);
  });

  it('prints the version with --version or -v, whatever the command', async () => {
    const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      version: string;
    };
    for (const args of [['--version'], ['-v'], ['status', '--version']])
      expect(await bbm(args)).toEqual({ code: 0, out: `pg-bbm ${version}\n`, err: '' });
  });

  it('prints help with exit 0 on --help', async () => {
    const result = await bbm(['--help']);
    expect(result.code).toBe(0);
    expect(result.out).toMatch(/Usage: bbm <command>/);
  });

  it('never prints the database password', async () => {
    const result = await bbm(['status', '--database-url', 'postgres://someone:s3cret-pw@127.0.0.1:1/db']);
    expect(result.code).toBe(1);
    expect(result.err).toMatch(/ECONNREFUSED/);
    expect(result.err).not.toContain('s3cret-pw');
  });
});

describe('bbm against a database', () => {
  const db = useTestDatabase();

  it('migrate says what it applied, and is idempotent', async () => {
    const fresh = await createTestDatabase({ empty: true });
    try {
      const first = await bbm(['migrate'], { DATABASE_URL: fresh.url });
      expect(first.code).toBe(0);
      expect(first.out).toMatch(
        /^applied (\d+) migration\(s\) of pg-bbm's schema: 0000_init, 0001_lock_next_migration, .*0007_cut_range/,
      );
      expect(await bbm(['migrate', '--json'], { DATABASE_URL: fresh.url })).toMatchObject({
        code: 0,
        out: '{\n  "applied": []\n}\n',
      });
      expect(await bbm(['migrate'], { DATABASE_URL: fresh.url })).toMatchObject({
        code: 0,
        out: 'pg-bbm schema is up to date; nothing to apply\n',
      });
    } finally {
      await fresh.drop();
    }
  });

  it('status --json reports every migration with progress and job counts', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 10));
    await enqueue(pool, { name: 'done_half', work: 'test.touch', table: 'items', batchSize: 5, max: 10 });
    await enqueue(pool, {
      name: 'newcomer',
      work: 'not.deployed.yet',
      table: 'items',
      batchSize: 5,
      min: 2n ** 60n,
      max: 2n ** 60n + 1n,
    });
    const id = (await migrationRow(pool, 'done_half'))!.id;
    await pool.query(
      `INSERT INTO batched_background_migration_jobs (batched_background_migration_id, min_value, max_value, status, attempts)
       VALUES ($1, 1, 5, 2, 1), ($1, 6, 8, 3, 2)`,
      [id],
    );

    const result = await bbm(['status', '--json', '--config', TEST_CONFIG], { DATABASE_URL: url });

    expect(result.code).toBe(0);
    expect(result.out).toContain(`"minValue": ${2n ** 60n}`);
    const reports = JSON.parse(result.out);
    expect(reports).toEqual([
      expect.objectContaining({
        name: 'done_half',
        status: 'active',
        jobSignatureName: 'test.touch',
        tableName: 'items',
        columnName: 'id',
        minValue: 1,
        maxValue: 10,
        batchSize: 5,
        failureErrorCode: null,
        failureMessage: null,
        progress: 0.5,
        jobs: { total: 2, finished: 1, failed: 1, active: 0 },
        lanes: 1,
        lanesInUse: 0,
        finishedPrefixEnd: 5,
        waitingForWork: false,
      }),
      expect.objectContaining({ name: 'newcomer', status: 'active', progress: 0, waitingForWork: true }),
    ]);
  });

  it('status shows a table for people, with waiting and failed migrations explained', async () => {
    const { pool, url } = db();
    await enqueue(pool, { name: 'newcomer', work: 'not.deployed.yet', table: 'items', batchSize: 5 });
    await pool.query(
      `INSERT INTO batched_background_migrations (name, batch_size, status, job_signature_name, table_name, column_name, failure_error_code, failure_message)
       VALUES ('broken', 5, 3, 'test.touch', 'gone', 'id', 1, 'table "gone" does not exist or is not visible')`,
    );

    const result = await bbm(['status', '--config', TEST_CONFIG], { DATABASE_URL: url });

    expect(result.code).toBe(0);
    const [header, ...lines] = result.out.trim().split('\n');
    expect(header).toMatch(/^ID\s+NAME\s+STATUS\s+PROGRESS/);
    expect(lines[0]).toMatch(/newcomer\s+active\s+0\.0%.*waiting for a worker with work function not\.deployed\.yet/);
    expect(lines[1]).toMatch(/broken\s+failed.*invalid_table: table "gone" does not exist/);
  });

  it('status --name of an unknown migration exits 1', async () => {
    const { url } = db();
    const result = await bbm(['status', '--name', 'ghost'], { DATABASE_URL: url });
    expect(result).toMatchObject({ code: 1, err: 'bbm status: no migration named "ghost"\n' });
  });

  it('pause and resume one migration or all of them', async () => {
    const { pool, url } = db();
    for (const name of ['a', 'b', 'c']) await enqueue(pool, { name, work: 'test.touch', table: 'items', batchSize: 5 });
    await pool.query(`UPDATE batched_background_migrations SET status = ${MigrationStatus.finished} WHERE name = 'c'`);
    const env = { DATABASE_URL: url };

    expect(await bbm(['pause', '--name', 'a'], env)).toMatchObject({ code: 0, out: 'paused: a\n' });
    expect((await migrationRow(pool, 'a'))?.status).toBe(MigrationStatus.paused);
    expect((await migrationRow(pool, 'b'))?.status).toBe(MigrationStatus.active);
    expect(await bbm(['pause'], env)).toMatchObject({ code: 0, out: 'paused: b\n' });
    expect(await bbm(['pause', '--name', 'c'], env)).toMatchObject({
      code: 0,
      out: 'c is finished; nothing to pause\n',
    });
    expect(await bbm(['resume', '--name', 'ghost'], env)).toMatchObject({
      code: 1,
      err: 'bbm resume: no migration named "ghost"\n',
    });
    expect(await bbm(['resume'], env)).toMatchObject({ code: 0, out: 'resumed: a, b\n' });
    expect((await migrationRow(pool, 'a'))?.status).toBe(MigrationStatus.active);
    expect((await migrationRow(pool, 'c'))?.status).toBe(MigrationStatus.finished);
  });

  it("connects with libpq's PG* variables when no URL is given, and never prints PGPASSWORD", async () => {
    const { url } = db();
    const parsed = new URL(url);
    const env = {
      PGHOST: parsed.hostname,
      PGPORT: parsed.port,
      PGUSER: decodeURIComponent(parsed.username),
      PGPASSWORD: decodeURIComponent(parsed.password),
      PGDATABASE: parsed.pathname.slice(1),
    };
    expect(await bbm(['status', '--json'], env)).toMatchObject({ code: 0, out: '[]\n' });
    const wrong = await bbm(['status'], { ...env, PGDATABASE: 'no_such_db' });
    expect(wrong).toMatchObject({ code: 1, err: expect.stringMatching(/database "no_such_db" does not exist/) });
    expect(wrong.err).not.toContain(env.PGPASSWORD);
    // Several hosts, as libpq takes them: the first refuses (nothing listens on port 1), the second serves.
    const listed = { ...env, PGHOST: `${parsed.hostname},${parsed.hostname}`, PGPORT: `1,${parsed.port}` };
    expect(await bbm(['status', '--json'], listed)).toMatchObject({ code: 0, out: '[]\n' });
  });

  it('delete removes a paused, failed or finished migration with its jobs, and refuses an active or running one', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 30));
    for (const [name, status] of [
      ['wrong', MigrationStatus.paused],
      ['live', MigrationStatus.active],
      ['busy', MigrationStatus.running],
      ['old', MigrationStatus.finished],
    ] as const) {
      await enqueue(pool, { name, work: 'test.touch', table: 'items', batchSize: 10, status });
    }
    await pool.query(
      `INSERT INTO batched_background_migration_jobs (batched_background_migration_id, min_value, max_value, status, attempts)
       SELECT id, 1, 10, 2, 1 FROM batched_background_migrations WHERE name IN ('old', 'live', 'busy')`,
    );
    const env = { DATABASE_URL: url };
    expect(await bbm(['delete', '--name', 'wrong'], env)).toEqual({
      code: 0,
      out: 'deleted wrong and its 0 job(s)\n',
      err: '',
    });
    expect(await bbm(['delete', '--name', 'old', '--json'], env)).toMatchObject({
      code: 0,
      out: '{\n  "deleted": "old",\n  "jobs": 1\n}\n',
    });
    expect(await bbm(['delete', '--name', 'live'], env)).toEqual({
      code: 1,
      out: '',
      err: 'bbm delete: live is active; pause it first (bbm pause --name live), then delete it\n',
    });
    expect(await bbm(['delete', '--name', 'busy'], env)).toEqual({
      code: 1,
      out: '',
      err: 'bbm delete: busy is running; pause it first (bbm pause --name busy), then delete it\n',
    });
    expect(await bbm(['delete', '--name', 'ghost'], env)).toMatchObject({
      code: 1,
      err: 'bbm delete: no migration named "ghost"\n',
    });
    expect(await bbm(['delete'], env)).toMatchObject({
      code: 2,
      err: expect.stringMatching(/bbm delete needs --name/),
    });
    const left = await pool.query<{ name: string; jobs: number }>(
      `SELECT m.name, (SELECT count(*)::int FROM batched_background_migration_jobs j WHERE j.batched_background_migration_id = m.id) AS jobs
       FROM batched_background_migrations m ORDER BY m.id`,
    );
    expect(left.rows).toEqual([
      { name: 'live', jobs: 1 },
      { name: 'busy', jobs: 1 },
    ]);
  });

  it('rejects a non-numeric --interval with exit 2', async () => {
    const { url } = db();
    const result = await bbm(['run', '--config', TEST_CONFIG, '--interval', 'soon'], { DATABASE_URL: url });
    expect(result).toMatchObject({ code: 2, err: expect.stringMatching(/--interval must be a whole number/) });
  });
});

describe('bbm help', () => {
  it.each([
    'run',
    'finalize',
    'status',
    'schedules',
    'enqueue',
    'set',
    'pause',
    'resume',
    'retry',
    'delete',
    'dashboard',
    'migrate',
  ])('has help for %s', async (command) => {
    const result = await bbm([command, '--help']);
    expect(result.code).toBe(0);
    expect(result.out).toMatch(new RegExp(`^bbm ${command}: .+\\n\\nUsage: bbm ${command}`));
    expect(result.out).toContain('--database-url URL');
  });
});

describe('bbm against a database never migrated', () => {
  it('says to run bbm migrate', async () => {
    const adminUrl = inject('adminUrl');
    const name = `bbm_bare_${Date.now()}`;
    const admin = new pg.Client(adminUrl);
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    try {
      const url = new URL(adminUrl);
      url.pathname = `/${name}`;
      const result = await bbm(['status'], { DATABASE_URL: url.toString() });
      expect(result).toMatchObject({
        code: 1,
        err: expect.stringMatching(
          /relation "batched_background_migration\w*" does not exist \(run `bbm migrate` first\)/,
        ),
      });
    } finally {
      await admin.query(`DROP DATABASE ${name} WITH (FORCE)`);
      await admin.end();
    }
  });
});
