/**
 * The database functions installed from sql/functions/ after the table migrations: the files are
 * the definitions the migration chain 0000-0017 left (as pg-bbm 0.9.3 did) but for what changed since, an
 * up-to-date database costs no DDL, concurrent installs are safe, and a worker of an older release
 * never replaces a newer release's functions.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { drizzle } from 'drizzle-orm/node-postgres';
import { migrate } from 'drizzle-orm/node-postgres/migrator';
import type pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { migrateSchema, migrateSchemaWith } from '../src/store/apply-schema.ts';
import {
  compareVersions,
  digestOf,
  packageVersion,
  readFunctionSet,
  renderFunctionSql,
  type FunctionSet,
} from '../src/store/functions.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';

const MIGRATIONS = fileURLToPath(new URL('../migrations', import.meta.url));
/** The last migration that defined functions: the chain a 0.9.3 database was built by. */
const LAST_WITH_FUNCTIONS = '0017_cut_counts_held_ranges';

async function emptyDatabase(): Promise<TestDatabase> {
  const db = await createTestDatabase({ empty: true });
  onTestFinished(() => db.drop());
  return db;
}

/** Every bbm_ function's definition as the server prints it, by signature. */
async function functionDefs(pool: pg.Pool): Promise<Record<string, string>> {
  const { rows } = await pool.query<{ signature: string; def: string }>(
    `SELECT p.oid::regprocedure::text AS signature, pg_catalog.pg_get_functiondef(p.oid) AS def
     FROM pg_catalog.pg_proc p WHERE p.proname LIKE 'bbm\\_%' ORDER BY 1`,
  );
  return Object.fromEntries(rows.map((r) => [r.signature, r.def]));
}

/** Applies migrations 0000-0017 only, with drizzle's migrator and pg-bbm's bookkeeping table, as 0.9.3 left a database. */
async function buildOldChain(pool: pg.Pool): Promise<void> {
  const folder = await mkdtemp(path.join(tmpdir(), 'pg-bbm-chain-'));
  onTestFinished(() => rm(folder, { recursive: true, force: true }));
  await cp(MIGRATIONS, folder, { recursive: true });
  const journalPath = path.join(folder, 'meta', '_journal.json');
  const journal = JSON.parse(await readFile(journalPath, 'utf8')) as { entries: Array<{ tag: string }> };
  const last = journal.entries.findIndex((entry) => entry.tag === LAST_WITH_FUNCTIONS);
  expect(last).toBe(17);
  journal.entries = journal.entries.slice(0, last + 1);
  await writeFile(journalPath, JSON.stringify(journal));
  await migrate(drizzle(pool), {
    migrationsFolder: folder,
    migrationsSchema: 'public',
    migrationsTable: 'pg_bbm_schema_migrations',
  });
}

/** Records the command tag of every DDL statement run in the database from now on. */
async function recordDdl(pool: pg.Pool): Promise<() => Promise<string[]>> {
  await pool.query(`CREATE TABLE ddl_log (tag text NOT NULL)`);
  await pool.query(`CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO ddl_log VALUES (tg_tag); END $$`);
  await pool.query(`CREATE EVENT TRIGGER log_ddl ON ddl_command_start EXECUTE FUNCTION log_ddl()`);
  return async () => (await pool.query<{ tag: string }>('SELECT tag FROM ddl_log')).rows.map((r) => r.tag);
}

async function installs(pool: pg.Pool): Promise<Array<{ version: string; digest: string }>> {
  return (
    await pool.query<{ version: string; digest: string }>('SELECT version, digest FROM pg_bbm_functions ORDER BY id')
  ).rows;
}

/** This release's files with bbm_cue_behind changed, as another release would ship them. */
function anotherRelease(version: string): FunctionSet {
  const current = readFunctionSet();
  const files = current.files.map((file) =>
    file.name === 'bbm_cue_behind.sql' ? { ...file, sql: file.sql.replace('depth / 2 - 1', 'depth / 2 - 2') } : file,
  );
  expect(files).not.toEqual(current.files);
  return { version, digest: digestOf(files), files };
}

/**
 * What this release changed since the chain (0.9.3), for batching keys that are not a single
 * integer column: the nine-argument cut became a shim of the cut that also takes a key's columns,
 * and the takes return the job's keys and the migration's arguments beside their old columns; on
 * Citus, a job's record makes it commit by two-phase commit (bbm_finish_job calls bbm_citus_two_phase);
 * a take says when a lane turned away looks again (bbm_look_again_after_jobs).
 * Every other function is the chain's, exactly; every signature the chain left still exists, for
 * the workers of earlier releases during a rolling deploy.
 */
const CHANGED_SINCE_CHAIN = [
  'bbm_cut_range(bigint,text,text,text,text,text,text,integer,boolean)',
  'bbm_take_job(text[],text,bigint,integer)',
  'bbm_take_next(bigint,integer,text[],integer)',
  'bbm_finish_job(bigint,integer,bigint,double precision,pg_lsn)',
];
const ADDED_SINCE_CHAIN = [
  'bbm_citus_two_phase()',
  'bbm_cut_range(bigint,text,text,text,text,text,text,integer,boolean,text[],oid[])',
  'bbm_key_text(jsonb)',
  'bbm_look_again_after_jobs(bigint,integer)',
  'bbm_quiet_shared(integer)',
];

/** The definitions that must equal the chain's: all but those changed since. */
const unchanged = (defs: Record<string, string>) =>
  Object.fromEntries(Object.entries(defs).filter(([signature]) => !CHANGED_SINCE_CHAIN.includes(signature)));

describe('the function files', () => {
  it('define what the migration chain 0000-0017 left, but for what changed since, alone or installed over it', async () => {
    const old = await emptyDatabase();
    await buildOldChain(old.pool);
    const chain = await functionDefs(old.pool);
    expect(Object.keys(chain)).toHaveLength(11);
    const expectedSignatures = [...Object.keys(chain), ...ADDED_SINCE_CHAIN].sort();

    // A new database: the chain, then the files over it.
    const fresh = await emptyDatabase();
    const result = await migrateSchema(fresh.pool);
    expect(result.applied.at(-1)).toBe('0023_lanes_reason');
    expect(result.functions).toEqual({ outcome: 'installed', version: packageVersion(), installedVersion: null });
    const installed = await functionDefs(fresh.pool);
    expect(Object.keys(installed).sort()).toEqual(expectedSignatures);
    expect(unchanged(installed)).toMatchObject(unchanged(chain));
    for (const signature of CHANGED_SINCE_CHAIN) expect(installed[signature]).not.toBe(chain[signature]);

    // The files alone: every function dropped, then installed again.
    for (const signature of Object.keys(installed)) await fresh.pool.query(`DROP FUNCTION ${signature} CASCADE`);
    expect(await functionDefs(fresh.pool)).toEqual({});
    await fresh.pool.query('DELETE FROM pg_bbm_functions');
    expect((await migrateSchema(fresh.pool)).functions.outcome).toBe('installed');
    expect(await functionDefs(fresh.pool)).toEqual(installed);

    // A 0.9.3 database upgraded: the table migrations since, then the files.
    const upgraded = await migrateSchema(old.pool);
    expect(upgraded).toEqual({
      applied: [
        '0018_function_versions',
        '0019_approval',
        '0020_notifications',
        '0021_keys',
        '0022_verify',
        '0023_lanes_reason',
      ],
      functions: { outcome: 'installed', version: packageVersion(), installedVersion: null },
      citus: null,
    });
    expect(await functionDefs(old.pool)).toEqual(installed);
    expect(await installs(old.pool)).toEqual([{ version: packageVersion(), digest: readFunctionSet().digest }]);
  });

  it('fill every token from codes.ts and locks.ts, and refuse an unknown one', () => {
    for (const file of readFunctionSet().files) expect(file.sql, file.name).not.toMatch(/\{\{|\}\}/);
    expect(renderFunctionSql('SELECT {{MAX_LANES}}, {{RUNNABLE_STATUSES}}', 'x.sql')).toBe('SELECT 256, 1, 4');
    expect(() => renderFunctionSql('SELECT {{MAX_LANE}}', 'x.sql')).toThrow('x.sql: unknown token {{MAX_LANE}}');
  });
});

describe('installing the functions', () => {
  it('a second time is a no-op: no DDL at all', async () => {
    const db = await emptyDatabase();
    await migrateSchema(db.pool);
    const ddl = await recordDdl(db.pool);

    const again = await migrateSchema(db.pool);

    expect(again).toEqual({
      applied: [],
      functions: { outcome: 'current', version: packageVersion(), installedVersion: packageVersion() },
      citus: null,
    });
    expect(await ddl()).toEqual([]);
    expect(await installs(db.pool)).toHaveLength(1);
  });

  it('from two processes at once: one installs, the other finds them installed', async () => {
    const db = await emptyDatabase();
    const results = await Promise.all([migrateSchema(db.pool), migrateSchema(db.pool)]);
    expect(results.map((r) => r.functions.outcome).sort()).toEqual(['current', 'installed']);
    const journal = JSON.parse(await readFile(path.join(MIGRATIONS, 'meta', '_journal.json'), 'utf8')) as {
      entries: unknown[];
    };
    expect(results.map((r) => r.applied.length).sort((a, b) => a - b)).toEqual([0, journal.entries.length]);
    expect(await installs(db.pool)).toHaveLength(1);
  });

  it('never replaces a newer release’s functions with an older release’s', async () => {
    const db = await emptyDatabase();
    await migrateSchema(db.pool);
    const current = await functionDefs(db.pool);

    // A worker of an older release, started during a rolling deploy.
    const ddl = await recordDdl(db.pool);
    const older = await migrateSchemaWith(db.pool, anotherRelease('0.9.2'));
    expect(older.functions).toEqual({ outcome: 'newer', version: '0.9.2', installedVersion: packageVersion() });
    expect(await ddl()).toEqual([]);
    expect(await functionDefs(db.pool)).toEqual(current);

    // The same files as a newer release's are installed; this release then leaves them.
    const newer = await migrateSchemaWith(db.pool, anotherRelease('99.0.0'));
    expect(newer.functions).toEqual({ outcome: 'installed', version: '99.0.0', installedVersion: packageVersion() });
    expect(await ddl()).toContain('CREATE FUNCTION');
    const installed = await functionDefs(db.pool);
    expect(installed['bbm_cue_behind(integer)']).toContain('depth / 2 - 2');
    expect((await migrateSchema(db.pool)).functions).toEqual({
      outcome: 'newer',
      version: packageVersion(),
      installedVersion: '99.0.0',
    });
    expect(await functionDefs(db.pool)).toEqual(installed);
    expect((await installs(db.pool)).map((i) => i.version)).toEqual([packageVersion(), '99.0.0']);
  });

  it('orders releases as semver does', () => {
    expect(compareVersions('0.9.3', '0.9.3')).toBe(0);
    expect(compareVersions('0.9.2', '0.9.3')).toBeLessThan(0);
    expect(compareVersions('0.10.0', '0.9.3')).toBeGreaterThan(0);
    expect(compareVersions('1.0.0-rc.1', '1.0.0')).toBeLessThan(0);
    expect(compareVersions('1.0.0-rc.2', '1.0.0-rc.10')).toBeLessThan(0);
    expect(compareVersions('1.0.0-alpha', '1.0.0-alpha.1')).toBeLessThan(0);
    expect(compareVersions('1.0.0-1', '1.0.0-alpha')).toBeLessThan(0);
  });
});
