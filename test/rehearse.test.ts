/**
 * Rehearsals (docs/rehearse.md): a migration's work run on sample ranges spread over its key space,
 * each rolled back, measured and projected to the whole migration; the table left exactly as it
 * was (the same rows, each the same tuple: same ctid and xmin), the report stored on the
 * migration's row. Integer, uuid and composite keys; what is refused; lock waits and timeouts;
 * `bbm rehearse` through the compiled command.
 */
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { enqueueMigration } from '../src/bbm/enqueue.ts';
import { rehearseMigration, RehearseError } from '../src/bbm/rehearse.ts';
import { LANE_SPEEDUP } from '../src/bbm/rehearse-projection.ts';
import type { JobKey, MigrationSpec, RehearsalReport, Work } from '../src/bbm/types.ts';
import { isTarget, resolveTarget } from '../src/store/catalog.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { sampledKeys } from '../src/store/rehearsal.ts';
import type { BlobStore } from '../src/work/gc/blob-store.ts';
import { GC_WORK, gcWork } from '../src/work/gc/index.ts';
import { bbm } from './support/cli.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, drain, nextJob, quiet, range, testWorker } from './support/engine.ts';
import { runBbm } from './support/processes.ts';

const CONFIG = fileURLToPath(new URL('./fixtures/rehearse.config.ts', import.meta.url));

/** As the fixture config's: touches the range's rows through `job.range`, and says how many. */
const touch: Work<JobKey> = {
  name: 'rehearse.touch',
  async do(job) {
    const { rowCount } = await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.range.sql}`, [
      ...job.range.params,
    ]);
    return rowCount ?? 0;
  },
};

/** Every row of the table as stored: its tuple's place (ctid) and inserting transaction (xmin), and its values. */
async function tuples(pool: pg.Pool, table: string, order: string): Promise<unknown[]> {
  const { rows } = await pool.query(
    `SELECT ctid::text AS ctid, xmin::text AS xmin, t::text AS row FROM ${table} t ORDER BY ${order}`,
  );
  return rows;
}

async function enqueuePaused(pool: pg.Pool, spec: Omit<MigrationSpec, 'work'> & { work?: string }): Promise<void> {
  await enqueueMigration(pool, { work: touch.name, paused: true, ...spec });
}

/** The migration's status, stored rehearsal, and how many job rows exist. */
async function migrationState(pool: pg.Pool, name: string) {
  const { rows } = await pool.query(
    `SELECT status, rehearsal, (SELECT count(*)::int FROM batched_background_migration_jobs) AS jobs
     FROM batched_background_migrations WHERE name = $1`,
    [name],
  );
  return rows[0];
}

const asStored = (report: RehearsalReport): unknown => JSON.parse(JSON.stringify(report));

describe('rehearseMigration', () => {
  const db = useTestDatabase();

  it('rehearses an integer key: ranges spread over the key space, rolled back, projected at its lanes and stored', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30_000));
    await enqueuePaused(pool, { name: 'ints', table: 'items', column: 'id', batchSize: 1_000, lanes: 4 });
    const before = await tuples(pool, 'items', 'id');

    const report = await rehearseMigration({ pool, work: [touch], name: 'ints', logger: quiet });

    expect(await tuples(pool, 'items', 'id')).toEqual(before);
    expect(report).toMatchObject({
      migration: 'ints',
      work: touch.name,
      table: 'public.items',
      key: ['id'],
      status: 'paused',
      batchSize: 1_000,
      sampling: 'spread',
      failed: 0,
      limits: { runTimeoutMs: 180_000, statementTimeoutMs: 190_000, lockTimeoutMs: 0 },
    });
    // Each range centred in its tenth of the 30,000 rows: ids 1001-2000, 4001-5000, … 28001-29000.
    expect(report.samples.map((s) => [s.start, s.end])).toEqual(
      range(0, 9).map((i) => [[String(1_001 + 3_000 * i)], [String(2_000 + 3_000 * i)]]),
    );
    for (const sample of report.samples) {
      expect(sample).toMatchObject({ rows: 1_000, rowsReported: 1_000, error: null, timeout: false });
      expect(sample.written).toMatchObject({ updated: 1_000, inserted: 0, deleted: 0 });
      expect(sample.written!.walBytes).toBeGreaterThan(0);
      expect(sample.workMs).toBeGreaterThan(0);
    }
    const projection = report.projection!;
    expect(projection).toMatchObject({
      lanes: 4,
      laneSpeedup: LANE_SPEEDUP.at(-1),
      rows: 30_000,
      rowsBasis: 'counted',
      batchSize: 1_000,
      jobs: 30,
      deadTuples: 30_000,
    });
    expect(projection.durationSeconds).toBeGreaterThan(0);
    expect(projection.durationSeconds).toBeCloseTo((30_000 * projection.msPerRow + 30 * 3) / 1_000 / 1.8, 6);
    const walPerRow = report.samples.reduce((sum, s) => sum + s.written!.walBytes, 0) / 10_000;
    expect(projection.walBytes).toBe(Math.round(30_000 * walPerRow));
    expect(projection.walBytesPerSecond).toBeCloseTo(projection.walBytes / projection.durationSeconds, 3);
    expect(projection.hotShare).toBeGreaterThanOrEqual(0);
    expect(projection.deadTuplesNotHot).toBe(Math.round(30_000 * (1 - projection.hotShare!)));

    // Stored as returned, in a statement of its own; the migration otherwise as it was.
    expect(await migrationState(pool, 'ints')).toEqual({
      status: MigrationStatus.paused,
      rehearsal: asStored(report),
      jobs: 0,
    });
  });

  it('rehearses a uuid key on its index, in its order; updates with room on their pages are HOT', async () => {
    const { pool } = db();
    // Half-full pages: an update of the unindexed column finds room beside its row, and is HOT.
    await pool.query(
      `CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0) WITH (fillfactor = 50)`,
    );
    await pool.query(`INSERT INTO u SELECT FROM generate_series(1, 20000)`);
    await enqueuePaused(pool, { name: 'uuids', table: 'u', column: 'id', batchSize: 500, lanes: 2 });
    const before = await tuples(pool, 'u', 'id');

    const report = await rehearseMigration({ pool, work: [touch], name: 'uuids', samples: 8 });

    expect(await tuples(pool, 'u', 'id')).toEqual(before);
    // Each range centred in its eighth of the rows: from place 1250 - 250 = 1000, then every 2500.
    const { rows: keys } = await pool.query<{ id: string }>('SELECT id::text FROM u ORDER BY id');
    expect(report.samples.map((s) => [s.start, s.end])).toEqual(
      range(0, 7).map((i) => [[keys[1_000 + 2_500 * i]!.id], [keys[1_499 + 2_500 * i]!.id]]),
    );
    for (const sample of report.samples) {
      expect(sample).toMatchObject({ rows: 500, rowsReported: 500, error: null });
      expect(sample.written!.walBytes).toBeGreaterThan(0);
      expect(sample.written!.updated).toBe(500);
    }
    expect(report.projection).toMatchObject({ lanes: 2, rows: 20_000, rowsBasis: 'counted', jobs: 40 });
    expect(report.projection!.hotShare).toBeGreaterThan(0.9);
    expect(report.projection!.deadTuples).toBe(20_000);
    expect(report.projection!.deadTuplesNotHot).toBeLessThan(2_000);
    expect(report.projection!.durationSeconds).toBeGreaterThan(0);
    expect(report.projection!.walBytes).toBeGreaterThan(0);
    expect((await migrationState(pool, 'uuids')).rehearsal).toEqual(asStored(report));
  });

  it('rehearses a composite key within its bounds', async () => {
    const { pool } = db();
    await pool.query(
      `CREATE TABLE c (tenant_id int NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0,
                       PRIMARY KEY (tenant_id, id))`,
    );
    await pool.query(`INSERT INTO c (tenant_id) SELECT i % 10 FROM generate_series(1, 20000) i`);
    const LOW = '00000000-0000-0000-0000-000000000000';
    await enqueuePaused(pool, {
      name: 'tenants',
      table: 'c',
      column: ['tenant_id', 'id'],
      batchSize: 400,
      minKey: [2, LOW],
      maxKey: [5, 'ffffffff-ffff-ffff-ffff-ffffffffffff'],
    });
    const before = await tuples(pool, 'c', 'tenant_id, id');

    const report = await rehearseMigration({ pool, work: [touch], name: 'tenants', samples: 5 });

    expect(await tuples(pool, 'c', 'tenant_id, id')).toEqual(before);
    expect(report.key).toEqual(['tenant_id', 'id']);
    expect(report.samples).toHaveLength(5);
    for (const sample of report.samples) {
      expect(sample).toMatchObject({ rows: 400, rowsReported: 400, error: null });
      expect(Number(sample.start[0])).toBeGreaterThanOrEqual(2);
      expect(Number(sample.end[0])).toBeLessThanOrEqual(5);
    }
    // Tenants 2 to 5: 8,000 rows.
    expect(report.projection).toMatchObject({ rows: 8_000, rowsBasis: 'counted', jobs: 20, lanes: 1, laneSpeedup: 1 });
  });

  it('runs the first ranges of a key space no larger than the samples, and projects nothing to do for an empty one', async () => {
    const { pool } = db();
    await createItems(pool, 'small', range(1, 2_500));
    await createItems(pool, 'none', []);
    await enqueuePaused(pool, { name: 'small', table: 'small', column: 'id', batchSize: 1_000 });
    await enqueuePaused(pool, { name: 'none', table: 'none', column: 'id', batchSize: 1_000 });

    const small = await rehearseMigration({ pool, work: [touch], name: 'small' });
    expect(small.sampling).toBe('whole');
    expect(small.samples.map((s) => [s.start[0], s.end[0], s.rows])).toEqual([
      ['1', '1000', 1_000],
      ['1001', '2000', 1_000],
      ['2001', '2500', 500],
    ]);
    expect(small.projection).toMatchObject({ rows: 2_500, jobs: 3 });

    const none = await rehearseMigration({ pool, work: [touch], name: 'none' });
    expect(none.samples).toEqual([]);
    expect(none.projection).toMatchObject({
      rows: 0,
      jobs: 1,
      durationSeconds: 0,
      walBytes: 0,
      walBytesPerSecond: null,
    });
  });

  it('refuses an unknown migration, a work the config lacks, a finished or failed migration and a work with side effects, running nothing', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 100));
    let called = 0;
    const mailer: Work<JobKey> = {
      name: 'rehearse.mailer',
      sideEffects: true,
      async do() {
        called += 1;
      },
    };
    for (const name of ['side', 'other', 'done', 'broken']) {
      const work = name === 'side' ? mailer.name : name === 'other' ? 'not.registered' : touch.name;
      await enqueuePaused(pool, { name, work, table: 'items', column: 'id', batchSize: 10 });
    }
    await pool.query(`UPDATE batched_background_migrations SET status = $1 WHERE name = 'done'`, [
      MigrationStatus.finished,
    ]);
    await pool.query(`UPDATE batched_background_migrations SET status = $1 WHERE name = 'broken'`, [
      MigrationStatus.failed,
    ]);
    const before = await tuples(pool, 'items', 'id');
    const refusal = async (name: string) => {
      const error = await rehearseMigration({ pool, work: [touch, mailer], name }).catch((e: unknown) => e);
      expect(error, name).toBeInstanceOf(RehearseError);
      return { code: (error as RehearseError).code, message: (error as RehearseError).message };
    };

    expect(await refusal('missing')).toEqual({ code: 'unknown_migration', message: 'no migration named "missing"' });
    expect(await refusal('other')).toEqual({
      code: 'work_not_registered',
      message: 'other runs work function not.registered, which the config does not register',
    });
    expect(await refusal('done')).toMatchObject({
      code: 'settled',
      message: expect.stringMatching(/^done is finished/),
    });
    expect(await refusal('broken')).toMatchObject({
      code: 'settled',
      message: expect.stringMatching(/^broken is failed/),
    });
    expect(await refusal('side')).toEqual({
      code: 'side_effects',
      message:
        'side runs work function rehearse.mailer, which acts outside the database (sideEffects: true): ' +
        'a rolled-back transaction cannot undo that, so it is not rehearsed',
    });
    expect(called).toBe(0);
    expect(await tuples(pool, 'items', 'id')).toEqual(before);
    const { rows } = await pool.query(
      'SELECT count(*)::int AS n FROM batched_background_migrations WHERE rehearsal IS NOT NULL',
    );
    expect(rows[0].n).toBe(0);
  });

  it("measures a sample's lock waits, and reports a work that fails or times out as a failed sample", async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 1_500));
    await enqueuePaused(pool, { name: 'locked', table: 'items', column: 'id', batchSize: 1_000 });
    const before = await tuples(pool, 'items', 'id');

    // Row 1 is locked for 600 ms: the first range waits for it.
    const blocker = await pool.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query('SELECT 1 FROM items WHERE id = 1 FOR UPDATE');
      const release = new Promise((resolve) => setTimeout(resolve, 600)).then(() => blocker.query('ROLLBACK'));
      const report = await rehearseMigration({ pool, work: [touch], name: 'locked' });
      await release;
      expect(report.samples.map((s) => s.rows)).toEqual([1_000, 500]);
      expect(report.samples[0]!.lockWaitMs).toBeGreaterThan(300);
      expect(report.samples[1]!.lockWaitMs).toBeLessThan(100);
      expect(report.projection!.lockWaitShare).toBeGreaterThan(0.3);
    } finally {
      blocker.release();
    }

    // A work that fails on its second range, and one that outlives the run timeout.
    const picky: Work<JobKey> = {
      name: 'rehearse.touch',
      async do(job) {
        const start = job.start as bigint;
        if (start > 1_000n) throw new Error(`row ${start} cannot be migrated`);
        return touch.do(job);
      },
    };
    const failing = await rehearseMigration({ pool, work: [picky], name: 'locked' });
    expect(failing.failed).toBe(1);
    expect(failing.samples[1]).toMatchObject({ error: 'row 1001 cannot be migrated', timeout: false, written: null });
    expect(failing.projection).toMatchObject({ rows: 1_500, jobs: 2 });

    const sleepy: Work<JobKey> = {
      name: 'rehearse.touch',
      async do(job) {
        await touch.do(job);
        await job.query('SELECT pg_sleep(5)');
      },
    };
    const started = Date.now();
    const slow = await rehearseMigration({ pool, work: [sleepy], name: 'locked', samples: 1, runTimeoutMs: 200 });
    expect(Date.now() - started).toBeLessThan(4_000);
    expect(slow.samples).toHaveLength(1);
    expect(slow.samples[0]).toMatchObject({ timeout: true, written: null });
    expect(slow.samples[0]!.error).toMatch(/runTimeoutMs \(200 ms\)/);
    expect(slow.projection).toBeNull();
    expect((await migrationState(pool, 'locked')).rehearsal).toEqual(asStored(slow));
    expect(await tuples(pool, 'items', 'id')).toEqual(before);
  });

  it("runs a sample under a job's limits: the same statement, idle and lock timeouts a job of a worker sees", async () => {
    const { url } = db();
    // A session lock_timeout, which jobs keep.
    const pool = new pg.Pool({ connectionString: url, options: '-c lock_timeout=1234' });
    try {
      await createItems(pool, 'items', range(1, 3_000));
      await enqueuePaused(pool, { name: 'limits', table: 'items', column: 'id', batchSize: 1_000 });
      const seen: Record<string, string>[] = [];
      const probe: Work<JobKey> = {
        name: touch.name,
        async do(job) {
          const { rows } = await job.query(
            `SELECT current_setting('statement_timeout') AS statement, current_setting('lock_timeout') AS lock,
                    current_setting('idle_in_transaction_session_timeout') AS idle`,
          );
          seen.push(rows[0] as Record<string, string>);
          return touch.do(job);
        },
      };

      const report = await rehearseMigration({ pool, work: [probe], name: 'limits', runTimeoutMs: 5_000 });
      expect(report.limits).toEqual({ statementTimeoutMs: 15_000, lockTimeoutMs: 1_234, runTimeoutMs: 5_000 });
      const rehearsed = seen.splice(0);
      expect(rehearsed).toHaveLength(3);

      await pool.query(`UPDATE batched_background_migrations SET status = $1 WHERE name = 'limits'`, [
        MigrationStatus.active,
      ]);
      const worker = testWorker(pool, { work: [probe], runTimeoutMs: 5_000 });
      expect((await nextJob(worker)).outcome).toBe('job_succeeded');
      expect(seen).toHaveLength(1);
      expect(rehearsed[0]).toEqual(seen[0]);
      expect(seen[0]).toEqual({ statement: '15s', lock: '1234ms', idle: '15s' });
    } finally {
      await pool.end();
    }
  });

  it('rehearses a started migration beside its lanes, and refuses it once it finished', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 5_000));
    await enqueueMigration(pool, { name: 'live', work: touch.name, table: 'items', column: 'id', batchSize: 1_000 });
    const worker = testWorker(pool, { work: [touch] });
    expect((await nextJob(worker)).outcome).toBe('job_succeeded');
    const before = await tuples(pool, 'items', 'id');
    const jobs = (await migrationState(pool, 'live')).jobs;

    const report = await rehearseMigration({ pool, work: [touch], name: 'live', logger: quiet });

    expect(report).toMatchObject({ status: 'running', enqueued: true, sampling: 'whole', failed: 0 });
    // The whole key space, the range its lane already ran too: the projection is of all of it.
    expect(report.samples.map((s) => [s.start[0], s.end[0]])).toEqual(
      range(0, 4).map((i) => [String(1 + 1_000 * i), String(1_000 * (i + 1))]),
    );
    expect(report.projection).toMatchObject({ rows: 5_000, jobs: 5 });
    expect(await tuples(pool, 'items', 'id')).toEqual(before);
    expect(await migrationState(pool, 'live')).toEqual({
      status: MigrationStatus.running,
      rehearsal: asStored(report),
      jobs,
    });

    await drain(worker);
    const { rows } = await pool.query<{ touched: number; n: number }>(
      'SELECT touched, count(*)::int AS n FROM items GROUP BY touched',
    );
    expect(rows).toEqual([{ touched: 1, n: 5_000 }]);
    const refused = await rehearseMigration({ pool, work: [touch], name: 'live' }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(RehearseError);
    expect(refused).toMatchObject({ code: 'settled', message: expect.stringMatching(/^live is finished/) });
    // The last rehearsal stays.
    expect((await migrationState(pool, 'live')).rehearsal).toEqual(asStored(report));
  });

  it('rehearses a migration described by a spec, not enqueued: nothing inserted, nothing stored', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 20_000));
    const before = await tuples(pool, 'items', 'id');
    const spec = { name: 'planned', work: touch.name, table: 'items', column: 'id', batchSize: 500, lanes: 2 };

    const report = await rehearseMigration({ pool, work: [touch], spec, samples: 4, logger: quiet });

    expect(report).toMatchObject({
      migration: 'planned',
      status: 'active',
      enqueued: false,
      batchSize: 500,
      failed: 0,
    });
    expect(report.samples).toHaveLength(4);
    for (const sample of report.samples) {
      expect(sample).toMatchObject({ rows: 500, rowsReported: 500 });
      expect(sample.written!.walBytes).toBeGreaterThan(0);
    }
    expect(report.projection).toMatchObject({ lanes: 2, rows: 20_000, jobs: 40 });
    expect(await tuples(pool, 'items', 'id')).toEqual(before);
    const count = async () =>
      (await pool.query('SELECT count(*)::int AS n FROM batched_background_migrations')).rows[0].n as number;
    expect(await count()).toBe(0);

    // Within its bounds, as enqueued with them.
    const bounded = await rehearseMigration({ pool, work: [touch], spec: { ...spec, min: 5_001n, max: 6_000n } });
    expect(bounded.samples.map((s) => [s.start[0], s.end[0]])).toEqual([
      ['5001', '5500'],
      ['5501', '6000'],
    ]);
    expect(bounded.projection).toMatchObject({ rows: 1_000, jobs: 2 });

    // Refused as an enqueued one would be, and as enqueueMigration refuses it.
    const refusal = async (params: Partial<MigrationSpec>) =>
      rehearseMigration({ pool, work: [touch], spec: { ...spec, ...params } }).catch((e: unknown) => e);
    expect(await refusal({ table: 'nope' })).toMatchObject({
      code: 'invalid_migration',
      message: expect.stringMatching(/^planned cannot be enqueued \(invalid_table\)/),
    });
    expect(await refusal({ work: 'not.registered' })).toMatchObject({ code: 'work_not_registered' });
    await enqueuePaused(pool, { name: 'planned', table: 'items', column: 'id', batchSize: 500 });
    expect(await refusal({})).toMatchObject({
      code: 'invalid_migration',
      message: 'a migration named "planned" already exists: rehearse it by its name alone',
    });
    expect(await count()).toBe(1);
    expect((await migrationState(pool, 'planned')).rehearsal).toBeNull();
    expect(await tuples(pool, 'items', 'id')).toEqual(before);
  });

  it("refuses the GC pack's sweeps that delete objects, by name or by spec, never calling the blob store", async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 100));
    const calls: string[] = [];
    const store = new Proxy({} as BlobStore, {
      get: (_, method) => {
        calls.push(String(method));
        return () => Promise.reject(new Error('a rehearsal must not reach the blob store'));
      },
    });
    const work = gcWork({ store });
    expect(work.filter((w) => w.sideEffects).map((w) => w.name)).toEqual([
      GC_WORK.orphanBlobs,
      GC_WORK.staleUploads,
      GC_WORK.deletedRepositories,
      GC_WORK.deletedNamespaces,
    ]);
    await enqueuePaused(pool, {
      name: 'orphans',
      work: GC_WORK.orphanBlobs,
      table: 'items',
      column: 'id',
      batchSize: 10,
    });
    for (const which of [
      { name: 'orphans' },
      { spec: { name: 'uploads', work: GC_WORK.staleUploads, table: 'items', column: 'id', batchSize: 10 } },
    ]) {
      const error = await rehearseMigration({ pool, work, ...which }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RehearseError);
      expect(error).toMatchObject({ code: 'side_effects', message: expect.stringMatching(/sideEffects: true/) });
    }
    expect(calls).toEqual([]);
    const { rows } = await pool.query('SELECT name, rehearsal FROM batched_background_migrations');
    expect(rows).toEqual([{ name: 'orphans', rehearsal: null }]);
  });

  it('finds keys spread over a sample of the pages (TABLESAMPLE), within the bounds, in key order', async () => {
    const { pool } = db();
    await pool.query(
      `CREATE TABLE c (tenant_id int NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0,
                       PRIMARY KEY (tenant_id, id))`,
    );
    await pool.query(`INSERT INTO c (tenant_id) SELECT i % 10 FROM generate_series(1, 20000) i`);
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const target = await resolveTarget(client, 'c', 'tenant_id,id');
      if (!isTarget(target)) throw new Error(target.message);
      const space = {
        start: ['3', '00000000-0000-0000-0000-000000000000'],
        end: ['6', 'ffffffff-ffff-ffff-ffff-ffffffffffff'],
      };
      // Every page: the keys at the middles of 8 equal shares of the 8,000 rows in the space.
      const all = await sampledKeys(client, target, space, 100, 8);
      expect(all).toMatchObject({ sampledRows: 20_000, insideRows: 8_000 });
      const { rows } = await client.query<{ k: string[] }>(
        `SELECT ARRAY[tenant_id::text, id::text] AS k FROM c WHERE tenant_id BETWEEN 3 AND 6 ORDER BY tenant_id, id`,
      );
      expect(all.keys).toEqual(range(0, 7).map((i) => rows[Math.ceil(8_000 * ((i + 0.5) / 8)) - 1]!.k));
      // A tenth of the pages: about a tenth of the rows, keys still in the space and in order.
      const some = await sampledKeys(client, target, space, 10, 8);
      expect(some.sampledRows).toBeGreaterThan(500);
      expect(some.sampledRows).toBeLessThan(5_000);
      expect(some.insideRows).toBeLessThanOrEqual(some.sampledRows);
      expect(some.keys.length).toBeGreaterThan(0);
      const places = some.keys.map((key) => rows.findIndex((row) => row.k[1] === key[1]));
      expect(places.every((place) => place >= 0)).toBe(true);
      expect([...places].sort((a, b) => a - b)).toEqual(places);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  });
});

describe('bbm rehearse', () => {
  const db = useTestDatabase();

  it('prints the samples and the projection, and with --json the report, through the compiled command', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 20_000));
    await enqueuePaused(pool, { name: 'ints', table: 'items', column: 'id', batchSize: 1_000 });
    const before = await tuples(pool, 'items', 'id');
    const env = { DATABASE_URL: url };
    const args = ['rehearse', '--name', 'ints', '--config', CONFIG, '--samples', '4', '--lanes', '2'];

    const text = await runBbm(args, env);
    expect(text.code, text.output).toBe(0);
    expect(text.output).toMatch(
      /^Rehearsed ints \(rehearse\.touch on public\.items by id, batch 1,000, paused\): 4 sample ranges, each rolled back\n/,
    );
    expect(text.output).toMatch(/\nrange +rows +work +ms\/row +WAL +HOT +lock wait +error\n/);
    expect(text.output).toMatch(
      /\n2001 \.\. 3000 +1,000 +[\d.]+ ms +[\d.]+ +[\d.]+ (bytes|kB|MB) +([\d.]+%|-) +\d+ ms\n/,
    );
    expect(text.output).toMatch(/\nProjected in 2 lanes at 1\.8× one lane's pace \(npm run bench's on 2 cores\):\n/);
    expect(text.output).toMatch(/\n {2}rows +20,000 \(counted\)\n {2}jobs +20 of 1,000 rows\n {2}duration +\d/);
    expect(text.output).toMatch(/\n {2}WAL +[\d.]+ (kB|MB|GB), [\d.]+ (kB|MB|GB)\/s\n/);
    expect(text.output).toMatch(/\n {2}dead tuples +20,000 for vacuum/);

    const json = await runBbm([...args, '--json'], env);
    expect(json.code, json.output).toBe(0);
    const report = JSON.parse(json.output) as RehearsalReport;
    expect(report.samples).toHaveLength(4);
    expect(report.projection).toMatchObject({ lanes: 2, laneSpeedup: 1.8, rows: 20_000, jobs: 20 });
    expect(report.projection!.durationSeconds).toBeGreaterThan(0);
    expect(report.projection!.walBytes).toBeGreaterThan(0);
    expect((await migrationState(pool, 'ints')).rehearsal).toEqual(report);
    expect(await tuples(pool, 'items', 'id')).toEqual(before);
  });

  it("rehearses a migration described by bbm enqueue's flags, enqueueing nothing", async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 10_000));
    const before = await tuples(pool, 'items', 'id');
    const args = ['rehearse', '--name', 'planned', '--config', CONFIG, '--samples', '3'];
    const described = [
      ...args,
      '--work',
      'rehearse.touch',
      '--table',
      'items',
      '--column',
      'id',
      '--batch-size',
      '500',
    ];

    const json = await runBbm([...described, '--lanes', '2', '--json'], { DATABASE_URL: url });
    expect(json.code, json.output).toBe(0);
    const report = JSON.parse(json.output) as RehearsalReport;
    expect(report).toMatchObject({ migration: 'planned', enqueued: false, batchSize: 500, failed: 0 });
    expect(report.projection).toMatchObject({ lanes: 2, rows: 10_000, jobs: 20 });
    expect(report.projection!.walBytes).toBeGreaterThan(0);

    const text = await bbm(described, { DATABASE_URL: url });
    expect(text).toMatchObject({ code: 0, err: '' });
    expect(text.out).toMatch(
      /^Rehearsed planned \(rehearse\.touch on public\.items by id, batch 500, not enqueued\): 3 sample/,
    );
    expect(await bbm([...args, '--work', 'rehearse.touch'], { DATABASE_URL: url })).toMatchObject({
      code: 2,
      err: expect.stringMatching(/bbm rehearse needs --table/),
    });
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM batched_background_migrations');
    expect(rows[0].n).toBe(0);
    expect(await tuples(pool, 'items', 'id')).toEqual(before);
  });

  it('refuses what cannot be rehearsed with exit 1 (2 for a work the config lacks) and says why', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 100));
    await enqueuePaused(pool, { name: 'side', work: 'rehearse.mailer', table: 'items', column: 'id', batchSize: 10 });
    await enqueuePaused(pool, { name: 'other', work: 'not.registered', table: 'items', column: 'id', batchSize: 10 });
    const env = { DATABASE_URL: url };
    const rehearse = (...args: string[]) => bbm(['rehearse', '--config', CONFIG, ...args], env);

    expect(await rehearse('--name', 'side')).toEqual({
      code: 1,
      out: '',
      err:
        'bbm rehearse: side runs work function rehearse.mailer, which acts outside the database (sideEffects: true): ' +
        'a rolled-back transaction cannot undo that, so it is not rehearsed\n',
    });
    expect(await rehearse('--name', 'nope')).toEqual({
      code: 1,
      out: '',
      err: 'bbm rehearse: no migration named "nope"\n',
    });
    expect(await rehearse('--name', 'other')).toMatchObject({
      code: 2,
      err: expect.stringMatching(/does not register/),
    });
    expect(await rehearse('--name', 'side', '--samples', '0')).toMatchObject({
      code: 2,
      err: expect.stringMatching(/--samples must be a whole number from 1 to 1000/),
    });
    expect((await bbm(['--help'], env)).out).toMatch(/\n {2}rehearse +Run a migration's work on sample ranges/);
    expect((await bbm(['rehearse', '--help'], env)).out).toMatch(/--samples N +Sample ranges to run/);
  });
});
