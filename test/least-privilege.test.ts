/**
 * `bbm` as a role with exactly the grants docs/deploying.md ("Privileges") lists: no CREATE on
 * the database or on schema public, no TEMPORARY, not a superuser. Every command but `bbm migrate`
 * on a schema that needs migrating works through the compiled CLI; that one fails with the
 * database's own message and SQLSTATE.
 */
import { randomBytes } from 'node:crypto';
import { drizzle } from 'drizzle-orm/node-postgres';
import { sql } from 'drizzle-orm';
import pg from 'pg';
import { describe, expect, inject, it, onTestFinished } from 'vitest';
import { describeError } from '../src/cli/main.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { sqlStateOf } from '../src/store/db.ts';
import { createTestDatabase, useTestDatabase } from './support/database.ts';
import { createItems, expectEveryRowOnce, migrationRow, range } from './support/engine.ts';
import { createJobLog, runBbm, startBbm, TEST_CONFIG, waitFor } from './support/processes.ts';

const PASSWORD = 'least-privilege-pw';

/**
 * A login role with the grants of docs/deploying.md on database `url` (whose pg-bbm tables
 * exist unless `bare`), and DML on `tables`; dropped when the test ends. Returns its URL.
 */
async function leastPrivilegeRole(
  url: string,
  { tables = [], bare = false }: { tables?: string[]; bare?: boolean } = {},
): Promise<string> {
  const role = `bbm_worker_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client(url);
  await admin.connect();
  const database = (await admin.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
  const statements = [
    `CREATE ROLE ${role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '${PASSWORD}'`,
    `REVOKE CREATE, TEMPORARY ON DATABASE ${database} FROM PUBLIC`,
    `REVOKE CREATE ON SCHEMA public FROM PUBLIC`,
    `GRANT USAGE ON SCHEMA public TO ${role}`,
  ];
  if (!bare) {
    statements.push(
      `GRANT SELECT, INSERT, UPDATE, DELETE ON batched_background_migrations, batched_background_migration_jobs, batched_background_migration_workers, batched_background_migration_notifications TO ${role}`,
      `GRANT USAGE ON SEQUENCE batched_background_migrations_id_seq, batched_background_migration_jobs_id_seq, batched_background_migration_notifications_id_seq TO ${role}`,
      `GRANT SELECT ON pg_bbm_schema_migrations TO ${role}`,
    );
  }
  for (const table of tables) statements.push(`GRANT SELECT, INSERT, UPDATE, DELETE ON ${table} TO ${role}`);
  try {
    for (const statement of statements) await admin.query(statement);
  } finally {
    await admin.end();
  }
  onTestFinished(async () => {
    // What it holds in the database, unless the database is gone already; then the role, which
    // is the cluster's, not the database's.
    const inDatabase = new pg.Client(url);
    try {
      await inDatabase.connect();
      await inDatabase.query(`DROP OWNED BY ${role}`);
    } catch (error) {
      if (sqlStateOf(error) !== '3D000') throw error; // invalid_catalog_name: dropped
    } finally {
      await inDatabase.end().catch(() => {});
    }
    const admin = new pg.Client(inject('adminUrl'));
    await admin.connect();
    try {
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [role]);
      await admin.query(`DROP ROLE ${role}`);
    } finally {
      await admin.end();
    }
  });
  const as = new URL(url);
  as.username = role;
  as.password = PASSWORD;
  return as.toString();
}

describe('a role with DML on pg-bbm and the migrated table, and no DDL privilege', () => {
  const db = useTestDatabase();

  it('enqueues, runs to the end, shows, pauses, resumes, retries, finalizes and serves the dashboard', async () => {
    const { pool, url: adminUrl } = db();
    await createItems(pool, 'items', range(1, 2000));
    await createJobLog(pool);
    const url = await leastPrivilegeRole(adminUrl, { tables: ['items', 'job_log'] });
    const env = { DATABASE_URL: url };
    const enqueue = (name: string, ...extra: string[]) =>
      runBbm(
        [
          'enqueue',
          ...['--name', name, '--work', 'test.touch', '--table', 'items', '--column', 'id'],
          ...['--batch-size', '100', '--config', TEST_CONFIG, ...extra],
        ],
        env,
      );

    const enqueued = await enqueue('fill');
    expect(enqueued, enqueued.output).toMatchObject({ code: 0 });
    // `bbm run` checks the schema is up to date (it is) and drains, with no DDL.
    const drained = await runBbm(['run', '--until-done', '--config', TEST_CONFIG], env);
    expect(drained, drained.output).toMatchObject({ code: 0 });
    await expectEveryRowOnce(pool, 'items', 'fill');

    const status = await runBbm(['status', '--json', '--config', TEST_CONFIG], env);
    expect(status, status.output).toMatchObject({ code: 0 });
    expect(JSON.parse(status.output)).toEqual([expect.objectContaining({ name: 'fill', status: 'finished' })]);

    // A migration that fails (row 150 cannot be migrated, once), is retried and finalized.
    await pool.query('UPDATE items SET touched = 0');
    expect(await enqueue('again')).toMatchObject({ code: 0 });
    expect(await runBbm(['pause', '--name', 'again'], env)).toMatchObject({ code: 0, output: 'paused: again\n' });
    expect((await migrationRow(pool, 'again'))?.status).toBe(MigrationStatus.paused);
    expect(await runBbm(['resume', '--name', 'again'], env)).toMatchObject({ code: 0, output: 'resumed: again\n' });
    const failing = await runBbm(['run', '--until-done', '--max-attempts', '1', '--config', TEST_CONFIG], {
      ...env,
      BBM_TEST_FAIL_AT: '150',
    });
    expect(failing.output).toContain('row 150 cannot be migrated');
    expect((await migrationRow(pool, 'again'))?.status).toBe(MigrationStatus.failed);
    const retried = await runBbm(['retry', '--name', 'again'], env);
    expect(retried, retried.output).toMatchObject({ code: 0 });
    expect((await migrationRow(pool, 'again'))?.status).toBe(MigrationStatus.active);
    const finalized = await runBbm(['finalize', '--name', 'again', '--config', TEST_CONFIG], env);
    expect(finalized, finalized.output).toMatchObject({ code: 0 });
    await expectEveryRowOnce(pool, 'items', 'again');

    // Approval: SELECT, UPDATE on the migrations table (a refusal reads J and W too, as status does).
    expect(await enqueue('gated', '--needs-approval')).toMatchObject({ code: 0 });
    expect(await runBbm(['approve', '--name', 'gated', '--by', 'dba'], env)).toMatchObject({ code: 0 });
    expect(await runBbm(['approve', '--name', 'gated'], env)).toMatchObject({ code: 1 });
    expect((await migrationRow(pool, 'gated'))?.status).toBe(MigrationStatus.active);
    await pool.query("DELETE FROM batched_background_migrations WHERE name = 'gated'");

    const dashboard = startBbm(['dashboard', '--port', '0', '--config', TEST_CONFIG], env);
    onTestFinished(() => void dashboard.child.kill('SIGKILL'));
    const base = await waitFor(
      async () => /status page on (http:\/\/\S+\/)/.exec(dashboard.output())?.[1],
      'the status page to listen',
    );
    expect((await fetch(base)).status).toBe(200);
    const api = await fetch(new URL('/api/migrations', base));
    expect(await api.json()).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ name: 'fill', status: 'finished' }),
        expect.objectContaining({ name: 'again', status: 'finished' }),
      ]),
    );
    dashboard.child.kill('SIGTERM');
    expect(await dashboard.exited, dashboard.output()).toEqual({ code: 0, signal: null });

    // Up to date, `bbm migrate` needs nothing more either.
    expect(await runBbm(['migrate'], env)).toMatchObject({
      code: 0,
      output: 'pg-bbm schema is up to date; nothing to apply\n',
    });
  });
});

describe('bbm migrate without DDL privileges', () => {
  it('fails with the database message and SQLSTATE when the schema needs migrating', async () => {
    const bare = await createTestDatabase({ empty: true });
    onTestFinished(() => bare.drop());
    const url = await leastPrivilegeRole(bare.url, { bare: true });

    const result = await runBbm(['migrate'], { DATABASE_URL: url });

    expect(result.code).toBe(1);
    expect(result.output).toMatch(
      /^bbm migrate: permission denied for schema public \(SQLSTATE 42501\) in: CREATE TABLE IF NOT EXISTS "public"\."pg_bbm_schema_migrations"/,
    );
    // Nothing was applied: the migrations ran in one transaction.
    const { rows } = await bare.pool.query(`SELECT to_regclass('batched_background_migrations') AS t`);
    expect(rows).toEqual([{ t: null }]);
  });

  it("shows drizzle's DrizzleQueryError as the database's message, SQLSTATE and statement", async () => {
    const bare = await createTestDatabase({ empty: true });
    onTestFinished(() => bare.drop());
    const url = await leastPrivilegeRole(bare.url, { bare: true });
    const pool = new pg.Pool({ connectionString: url, max: 1 });
    onTestFinished(() => pool.end());

    const error: unknown = await drizzle(pool)
      .execute(sql`CREATE SCHEMA IF NOT EXISTS "public"`)
      .catch((e: unknown) => e);

    expect((error as Error).message).toMatch(/^Failed query: CREATE SCHEMA/);
    expect(describeError(error)).toMatch(
      /^permission denied for database bbm_test_\w+ \(SQLSTATE 42501\) in: CREATE SCHEMA IF NOT EXISTS "public"$/,
    );
  });
});
