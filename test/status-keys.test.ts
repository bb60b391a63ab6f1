/**
 * What operators see of a migration batched on a key that is not a single integer column
 * (docs/operating.md, "Progress for keys"): progress as rows done over the table's estimated
 * rows, labelled as an estimate; the finished prefix and the bounds as keys, never the ranges'
 * ordinals; in listMigrations, migrationReports, `bbm status` (text and JSON) and the status page.
 */
import type pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startOpsServer } from '../src/bbm/ops-server.ts';
import { createStatusPage } from '../src/bbm/status-page.ts';
import { migrationReports } from '../src/bbm/status.ts';
import type { Worker } from '../src/bbm/worker.ts';
import { KEY_ORDINAL_END, KEY_ORDINAL_STEP } from '../src/store/codes.ts';
import { listMigrations } from '../src/store/migration-rows.ts';
import { bbm } from './support/cli.ts';
import { useTestDatabase } from './support/database.ts';
import { touchRange } from './support/keys.ts';
import { createItems, drain, enqueue, quiet, range, testWorker, touch } from './support/engine.ts';

const db = useTestDatabase();

/** Ordinals a key migration's rows hold, which operators must never be shown as its bounds or ranges. */
const ORDINALS = [KEY_ORDINAL_END, KEY_ORDINAL_STEP, KEY_ORDINAL_STEP + 1n, 2n * KEY_ORDINAL_STEP].map(String);

async function insertKeyMigration(pool: pg.Pool, name: string, table: string, column: string, batchSize: number) {
  await pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name)
     VALUES ($1, $2, $3, $4, $5)`,
    [name, batchSize, touchRange.name, table, column],
  );
}

/** Runs the worker until it has finished `jobs` jobs (starting the migration on the way). */
async function runJobs(worker: Worker, jobs: number): Promise<void> {
  let done = 0;
  for (let i = 0; done < jobs && i < 100; i += 1) {
    const { outcome } = await worker.runOnce();
    if (outcome === 'job_succeeded') done += 1;
    else if (outcome !== 'migration_started') throw new Error(`unexpected run: ${outcome}`);
  }
  expect(done).toBe(jobs);
}

/** A uuid table of 1000 rows, analyzed, with a migration over it 300 rows in (three ranges of 100). */
async function uuidPartWay(pool: pg.Pool, { analyze = true } = {}): Promise<void> {
  await pool.query(
    `CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0)
     WITH (autovacuum_enabled = false)`,
  );
  await pool.query(`INSERT INTO u SELECT FROM generate_series(1, 1000)`);
  if (analyze) await pool.query('ANALYZE u');
  await insertKeyMigration(pool, 'by_uuid', 'u', 'id', 100);
  await runJobs(testWorker(pool, { work: [touchRange], concurrency: 1 }), 3);
}

/** The n-th key (from 1) of a table in the order of `key`, each value as text. */
async function nthKey(pool: pg.Pool, table: string, key: string[], n: number): Promise<string[]> {
  const { rows } = await pool.query<{ k: string[] }>(
    `SELECT ARRAY[${key.map((c) => `${c}::text`).join(', ')}] AS k FROM ${table} ORDER BY ${key.join(', ')} LIMIT 1 OFFSET $1`,
    [n - 1],
  );
  return rows[0]!.k;
}

/** The rows of `table` touched, and untouched, up to and past `prefix` (a row of the key's values). */
async function touchedAround(pool: pg.Pool, table: string, key: string, prefix: string, params: string[]) {
  const { rows } = await pool.query<{ before: number; untouched_before: number; touched_after: number }>(
    `SELECT count(*) FILTER (WHERE ${key} <= ${prefix})::int AS before,
            count(*) FILTER (WHERE ${key} <= ${prefix} AND touched = 0)::int AS untouched_before,
            count(*) FILTER (WHERE ${key} > ${prefix} AND touched > 0)::int AS touched_after
     FROM ${table}`,
    params,
  );
  return rows[0]!;
}

describe('progress of a key migration', () => {
  it('a uuid key: rows over the estimated rows, the finished prefix and bounds as keys', async () => {
    const { pool, url } = db();
    await uuidPartWay(pool);
    const first = await nthKey(pool, 'u', ['id'], 1);
    const last = await nthKey(pool, 'u', ['id'], 1000);
    const prefix = await nthKey(pool, 'u', ['id'], 300);

    const [summary] = await listMigrations(pool, { name: 'by_uuid' });
    expect(summary!.key).toEqual({
      min: first,
      max: last,
      finishedPrefix: prefix,
      finishedRows: 300,
      estimatedRows: 1000,
    });
    // Ordinals mean nothing to an operator: no integer prefix for a key migration.
    expect(summary!.finishedPrefixEnd).toBeNull();
    // Every row up to the prefix was done, none past it (one lane runs the ranges in order).
    expect(await touchedAround(pool, 'u', 'id', '$1::uuid', prefix)).toEqual({
      before: 300,
      untouched_before: 0,
      touched_after: 0,
    });

    const [report] = await migrationReports(pool, { name: 'by_uuid' });
    expect(report).toMatchObject({ progressBasis: 'rows-estimate', status: 'running' });
    expect(report!.progress).toBeCloseTo(0.3, 5);

    const json = await bbm(['status', '--json', '--name', 'by_uuid'], { DATABASE_URL: url });
    expect(json.code).toBe(0);
    const [fromCli] = JSON.parse(json.out);
    expect(fromCli).toMatchObject({
      progressBasis: 'rows-estimate',
      key: { min: first, max: last, finishedPrefix: prefix, finishedRows: 300, estimatedRows: 1000 },
    });
    expect(fromCli.progress).toBeGreaterThan(0);
    expect(fromCli.progress).toBeLessThan(1);

    const text = await bbm(['status', '--name', 'by_uuid'], { DATABASE_URL: url });
    expect(text.out).toMatch(/by_uuid\s+running\s+~30\.0%\s+3\/0/);
    expect(text.out).toContain(`u.id [${first[0]}..${last[0]}] by 100`);
    expect(text.out).toContain('~: estimated');
    for (const ordinal of ORDINALS) expect(text.out).not.toContain(ordinal);
  });

  it('a composite key: bounds and the finished prefix as (a, b), each a real key of the table', async () => {
    const { pool, url } = db();
    await pool.query(
      `CREATE TABLE c (tenant_id int NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0,
                       PRIMARY KEY (tenant_id, id))`,
    );
    await pool.query(`INSERT INTO c (tenant_id) SELECT i % 7 FROM generate_series(1, 1500) i`);
    await pool.query('ANALYZE c');
    await insertKeyMigration(pool, 'by_tenant', 'c', 'tenant_id,id', 64);
    await runJobs(testWorker(pool, { work: [touchRange], concurrency: 1 }), 4);
    const key = ['tenant_id', 'id'];
    const first = await nthKey(pool, 'c', key, 1);
    const last = await nthKey(pool, 'c', key, 1500);
    const prefix = await nthKey(pool, 'c', key, 4 * 64);

    const [report] = await migrationReports(pool, { name: 'by_tenant' });
    expect(report).toMatchObject({
      progressBasis: 'rows-estimate',
      finishedPrefixEnd: null,
      key: { min: first, max: last, finishedPrefix: prefix, finishedRows: 256, estimatedRows: 1500 },
    });
    expect(report!.progress).toBeCloseTo(256 / 1500, 5);
    expect(await touchedAround(pool, 'c', '(tenant_id, id)', '($1::int, $2::uuid)', prefix)).toEqual({
      before: 256,
      untouched_before: 0,
      touched_after: 0,
    });

    const [fromCli] = JSON.parse((await bbm(['status', '--json'], { DATABASE_URL: url })).out);
    expect(fromCli.key.finishedPrefix).toEqual(prefix);
    const text = (await bbm(['status'], { DATABASE_URL: url })).out;
    expect(text).toContain(`c.tenant_id,id [(${first.join(', ')})..(${last.join(', ')})] by 64`);
    expect(text).toMatch(/by_tenant\s+running\s+~17\.1%/);
    for (const ordinal of ORDINALS) expect(text).not.toContain(ordinal);
  });

  it("falls back to the table's row estimate now, and says when there is none", async () => {
    const { pool, url } = db();
    await uuidPartWay(pool, { analyze: false });

    // Never analyzed: nothing to estimate from. Rows done, no percentage, no time left.
    const [unknown] = await migrationReports(pool, { name: 'by_uuid' });
    expect(unknown).toMatchObject({
      progressBasis: 'rows-estimate',
      progress: 0,
      etaSeconds: null,
      key: { finishedRows: 300, estimatedRows: null },
    });
    const text = (await bbm(['status'], { DATABASE_URL: url })).out;
    expect(text).toMatch(/by_uuid\s+running\s+300 rows\s+3\/0/);
    expect(text).toContain('the table has no row estimate');
    expect(text).not.toContain('~: estimated');

    // Analyzed after the start: the estimate comes from pg_class now.
    await pool.query('ANALYZE u');
    const [estimated] = await migrationReports(pool, { name: 'by_uuid' });
    expect(estimated!.key).toMatchObject({ finishedRows: 300, estimatedRows: 1000 });
    expect(estimated!.progress).toBeCloseTo(0.3, 5);
    expect(estimated!.etaSeconds).toBeGreaterThan(0);
  });

  it('reads a table name that to_regclass would raise on as having no estimate', async () => {
    const { pool, url } = db();
    // Enqueued unchecked, with its bounds given: a key migration that has not started.
    await pool.query(
      `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, min_key, max_key)
       VALUES ('elsewhere', 10, 'keys.touch', 'other_db.public.u', 'id', '"a"', '["m"]')`,
    );
    const [report] = await migrationReports(pool, { name: 'elsewhere' });
    expect(report).toMatchObject({
      progress: 0,
      progressBasis: 'rows-estimate',
      key: { min: ['a'], max: ['m'], finishedPrefix: null, finishedRows: 0, estimatedRows: null },
    });
    expect((await bbm(['status'], { DATABASE_URL: url })).out).toContain('other_db.public.u.id [a..m] by 10');
  });

  it('stays below 100 % until finished when the estimate is short, and is 1 once finished', async () => {
    const { pool } = db();
    await uuidPartWay(pool);
    // A table that has grown (or a stale estimate): more rows done than estimated.
    await pool.query(`UPDATE batched_background_migrations SET total_tuple_count = 200 WHERE name = 'by_uuid'`);
    const [short] = await migrationReports(pool, { name: 'by_uuid' });
    expect(short!.progress).toBeLessThan(1);
    expect(short!.progress).toBeGreaterThan(0.9);
    expect(short!.etaSeconds).toBeNull();

    await drain(testWorker(pool, { work: [touchRange], concurrency: 1 }));
    const [finished] = await migrationReports(pool, { name: 'by_uuid' });
    expect(finished).toMatchObject({ status: 'finished', progress: 1, progressBasis: 'rows-estimate' });
    expect(finished!.key).toMatchObject({ finishedRows: 1000, finishedPrefix: await nthKey(pool, 'u', ['id'], 1000) });
  });

  it('an integer migration keeps its shape: key-width progress, no key', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 100));
    await enqueue(pool, { name: 'ints', work: touch.name, table: 'items', batchSize: 10 });
    await runJobs(testWorker(pool, { work: [touch], concurrency: 1 }), 4);
    const [report] = await migrationReports(pool, { name: 'ints' });
    expect(report).toMatchObject({
      progressBasis: 'key-width',
      progress: 0.4,
      finishedPrefixEnd: 40n,
      minValue: 1n,
      maxValue: 100n,
      key: null,
    });
  });
});

describe('the status page for a key migration', () => {
  it('shows keys, never ordinals: bounds, the finished prefix, each job’s range; progress as an estimate', async () => {
    const { pool } = db();
    await uuidPartWay(pool);
    const server = await startOpsServer({ page: createStatusPage({ db: pool, log: quiet }), db: pool, port: 0 });
    onTestFinished(() => server.close());
    const base = `http://${server.host}:${server.port}`;
    const first = await nthKey(pool, 'u', ['id'], 1);
    const last = await nthKey(pool, 'u', ['id'], 1000);
    const prefix = await nthKey(pool, 'u', ['id'], 300);
    const secondRange = [await nthKey(pool, 'u', ['id'], 101), await nthKey(pool, 'u', ['id'], 200)];

    const list = await (await fetch(`${base}/`)).text();
    expect(list).toContain('<span data-field="progress">~30.0%</span>');

    const page = await (await fetch(`${base}/migrations/by_uuid`)).text();
    expect(page).toContain(`[${first[0]}..${last[0]}]`);
    expect(page).toContain(`finished through ${prefix[0]}`);
    expect(page).toContain(`<td>${secondRange[0]![0]}..${secondRange[1]![0]}</td>`);
    expect(page).toContain('300 of about 1,000 rows');
    for (const ordinal of ORDINALS) expect(page).not.toContain(ordinal);

    const [api] = (await (await fetch(`${base}/api/migrations`)).json()) as Array<Record<string, unknown>>;
    expect(api).toMatchObject({ progressBasis: 'rows-estimate', key: { finishedPrefix: prefix } });
  });
});

describe('a key migration over a partitioned table', () => {
  it('runs over every partition, and estimates its rows from the partitions (the parent has no estimate)', async () => {
    const { pool } = db();
    await pool.query(
      `CREATE TABLE p (tenant_id int NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0,
                       PRIMARY KEY (tenant_id, id)) PARTITION BY LIST (tenant_id)`,
    );
    for (const t of [1, 2, 3]) await pool.query(`CREATE TABLE p${t} PARTITION OF p FOR VALUES IN (${t})`);
    await pool.query(`INSERT INTO p (tenant_id) SELECT 1 + i % 3 FROM generate_series(1, 900) i`);
    await pool.query('ANALYZE p1, p2, p3');
    await insertKeyMigration(pool, 'part', 'p', 'tenant_id,id', 100);
    const worker = testWorker(pool, { work: [touchRange] });
    await runJobs(worker, 3);
    const [report] = await migrationReports(pool, { name: 'part' });
    expect(report?.key?.estimatedRows).toBe(900);
    expect(report?.progress).toBeCloseTo(300 / 900, 2);
    await drain(worker);
    const { rows } = await pool.query(`SELECT touched, count(*)::int AS n FROM p GROUP BY touched`);
    expect(rows).toEqual([{ touched: 1, n: 900 }]);
  });
});
