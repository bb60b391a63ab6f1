import pg from 'pg';
import { describe, expect, inject, it } from 'vitest';
import { MigrationStatus } from '../src/store/codes.ts';
import { bbm } from './support/cli.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, migrationRow, range } from './support/engine.ts';
import { TEST_CONFIG } from './support/processes.ts';

describe('bbm without a database', () => {
  it('says how to give one and exits 2', async () => {
    const result = await bbm(['status']);
    expect(result.code).toBe(2);
    expect(result.err).toMatch(/no database: set DATABASE_URL or pass --database-url/);
  });

  it.each([
    [['frobnicate'], /unknown command "frobnicate"/],
    [['status', '--bogus'], /Unknown option '--bogus'/],
    [['pause', '--watch'], /--watch is not an option of this command/],
    [['run', '--database-url', 'postgres://x@127.0.0.1:1/x'], /bbm run needs work functions/],
    [['status', '--config', 'nope.config.ts', '--database-url', 'postgres://x@127.0.0.1:1/x'], /config file nope.config.ts does not exist/],
  ])('rejects %j with exit 2', async (args, message) => {
    const result = await bbm(args);
    expect(result.code).toBe(2);
    expect(result.err).toMatch(message);
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

  it('migrate is idempotent', async () => {
    const { url } = db();
    expect(await bbm(['migrate'], { DATABASE_URL: url })).toMatchObject({ code: 0, out: 'pg-bbm schema is up to date\n' });
    expect(await bbm(['migrate', '--database-url', url])).toMatchObject({ code: 0 });
  });

  it('status --json reports every migration with progress and job counts', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 10));
    await enqueue(pool, { name: 'done_half', work: 'test.touch', table: 'items', batchSize: 5, max: 10 });
    await enqueue(pool, { name: 'newcomer', work: 'not.deployed.yet', table: 'items', batchSize: 5, min: 2n ** 60n, max: 2n ** 60n + 1n });
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
    expect(await bbm(['pause', '--name', 'c'], env)).toMatchObject({ code: 0, out: 'c is finished; nothing to pause\n' });
    expect(await bbm(['resume', '--name', 'ghost'], env)).toMatchObject({ code: 1, err: 'bbm resume: no migration named "ghost"\n' });
    expect(await bbm(['resume'], env)).toMatchObject({ code: 0, out: 'resumed: a, b\n' });
    expect((await migrationRow(pool, 'a'))?.status).toBe(MigrationStatus.active);
    expect((await migrationRow(pool, 'c'))?.status).toBe(MigrationStatus.finished);
  });

  it('rejects a non-numeric --interval with exit 2', async () => {
    const { url } = db();
    const result = await bbm(['run', '--config', TEST_CONFIG, '--interval', 'soon'], { DATABASE_URL: url });
    expect(result).toMatchObject({ code: 2, err: expect.stringMatching(/--interval must be a whole number/) });
  });
});

describe('bbm help', () => {
  it.each(['run', 'finalize', 'status', 'schedules', 'enqueue', 'set', 'pause', 'resume', 'retry', 'migrate'])('has help for %s', async (command) => {
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
      expect(result).toMatchObject({ code: 1, err: expect.stringMatching(/relation "batched_background_migration\w*" does not exist \(run `bbm migrate` first\)/) });
    } finally {
      await admin.query(`DROP DATABASE ${name} WITH (FORCE)`);
      await admin.end();
    }
  });
});
