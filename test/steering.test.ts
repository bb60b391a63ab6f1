import { describe, expect, it } from 'vitest';
import type { Work } from '../src/bbm/types.ts';
import { migrationReports, pause, resume } from '../src/bbm/status.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { LANE_LOCK_BASE } from '../src/store/locks.ts';
import { maxReplicaLagBytes, readyWalSegments } from '../src/store/health.ts';
import { anyThrottle, replicaLagThrottle, walArchiveThrottle } from '../src/bbm/throttle.ts';
import { useTestDatabase } from './support/database.ts';
import {
  createItems,
  drain,
  enqueue,
  expectEveryRowOnce,
  jobRanges,
  migrationRow,
  nextJob,
  range,
  testWorker,
  touch,
} from './support/engine.ts';
import { waitFor } from './support/processes.ts';

describe('steering', () => {
  const db = useTestDatabase();

  it('pause stops a migration between jobs; resume picks it up where it stopped', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 50));
    await enqueue(pool, { name: 'steady', work: touch.name, table: 'items', batchSize: 10 });
    const worker = testWorker(pool, { work: [touch] });
    await nextJob(worker);
    await nextJob(worker);

    expect(await pause(pool, 'steady')).toEqual(['steady']);
    expect((await worker.runOnce()).outcome).toBe('no_job');
    // Two ranges finished; the other three were cut ahead (active) and wait for the resume.
    expect((await jobRanges(pool, 'steady', { all: true })).map((j) => j.status)).toEqual([2, 2, 1, 1, 1]);
    expect((await migrationReports(pool, { name: 'steady' }))[0]).toMatchObject({ status: 'paused', progress: 0.4 });

    expect(await resume(pool)).toEqual(['steady']);
    await drain(worker);

    expect((await migrationRow(pool, 'steady'))?.status).toBe(MigrationStatus.finished);
    const { rows } = await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM items');
    expect(rows[0].t).toEqual([1]);
  });

  it('a pause during a job neither waits for it nor is lost: the job commits, the migration stays paused', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    const pausing: Work = {
      name: 'test.pausing',
      async do(job) {
        await touch.do(job);
        // An operator pauses from another connection while this job is in flight; it must not
        // wait for the job (the test would hang if the run held the migration row's lock).
        if (job.start === 1n) await pause(pool);
      },
    };
    await enqueue(pool, { name: 'interrupted', work: pausing.name, table: 'items', batchSize: 10 });
    const worker = testWorker(pool, { work: [pausing] });

    expect((await worker.runOnce()).outcome).toBe('migration_started');
    expect((await worker.runOnce()).outcome).toBe('job_succeeded');
    expect((await worker.runOnce()).outcome).toBe('no_job');
    expect((await migrationRow(pool, 'interrupted'))?.status).toBe(MigrationStatus.paused);
    expect((await jobRanges(pool, 'interrupted')).map((j) => j.status)).toEqual([2]);
  });

  it('leaves a migration whose work function this worker lacks waiting, for a worker that has it', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 20));
    const newer: Work = { ...touch, name: 'test.newer' };
    await enqueue(pool, { name: 'for_newer', work: newer.name, table: 'items', batchSize: 10 });
    const older = testWorker(pool, { work: [touch] });

    expect((await older.runOnce()).outcome).toBe('no_job');
    expect(await migrationRow(pool, 'for_newer')).toMatchObject({
      status: MigrationStatus.active,
      failure_error_code: null,
    });
    expect(await jobRanges(pool, 'for_newer')).toEqual([]);
    expect((await migrationReports(pool, { knownWork: [touch.name] }))[0]?.waitingForWork).toBe(true);

    await drain(testWorker(pool, { work: [touch, newer] }));

    expect((await migrationRow(pool, 'for_newer'))?.status).toBe(MigrationStatus.finished);
  });

  it('locks per migration: a second worker runs another migration while the first is busy, and waits on the same one', async () => {
    const { pool } = db();
    await createItems(pool, 'one', range(1, 10));
    await createItems(pool, 'two', range(1, 10));
    let entered!: () => void;
    const inside = new Promise<void>((resolve) => (entered = resolve));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const held: Work = {
      name: 'test.held',
      async do(job) {
        await touch.do(job);
        if (job.migration.name === 'first' && job.start === 1n) {
          entered();
          await gate;
        }
      },
    };
    await enqueue(pool, { name: 'first', work: held.name, table: 'one', batchSize: 5 });
    const busy = nextJob(testWorker(pool, { work: [held] }));
    await inside;

    const other = testWorker(pool, { work: [held] });
    // Only `first` is runnable: its lock is held.
    expect((await other.runOnce()).outcome).toBe('lock_in_use');
    await enqueue(pool, { name: 'second', work: held.name, table: 'two', batchSize: 5 });
    const result = await nextJob(other);
    release();

    expect(result).toMatchObject({ outcome: 'job_succeeded', migration: { name: 'second' } });
    expect((await busy).outcome).toBe('job_succeeded');
  });

  it('reads batch_size anew for every range it cuts, so pace changes without a restart', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 100));
    await enqueue(pool, { name: 'paced', work: touch.name, table: 'items', batchSize: 20 });
    const worker = testWorker(pool, { work: [touch] });
    await nextJob(worker);
    // All five ranges were cut ahead at 20; lowering the size cuts again those still waiting.
    await pool.query(`UPDATE batched_background_migrations SET batch_size = 5 WHERE name = 'paced'`);
    await drain(worker);

    // [21, 40] was taken with the change unseen (its take sent the cut beside it); every range
    // after it has the new size.
    expect((await jobRanges(pool, 'paced')).map((j) => [j.min, j.max])).toEqual([
      [1, 20],
      [21, 40],
      ...range(0, 11).map((k) => [41 + 5 * k, 45 + 5 * k]),
    ]);
    await expectEveryRowOnce(pool, 'items', 'paced');
  });

  it('shows a raised batch_size once the ranges cut ahead have run', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 330));
    await enqueue(pool, { name: 'raised', work: touch.name, table: 'items', batchSize: 5 });
    const worker = testWorker(pool, { work: [touch] });
    await nextJob(worker);
    await pool.query(`UPDATE batched_background_migrations SET batch_size = 50 WHERE name = 'raised'`);
    await drain(worker);

    // Smaller ranges only run faster: the sixteen cut ahead at 5 stay (with any cut beside the
    // first jobs before the change was seen), then 50 (330 = 16 x 5 + 5 x 50).
    const sizes = (await jobRanges(pool, 'raised')).map((j) => j.max - j.min + 1);
    const firstRaised = sizes.findIndex((size) => size === 50);
    expect(firstRaised).toBeGreaterThanOrEqual(16);
    expect(firstRaised).toBeLessThanOrEqual(24);
    expect(sizes.slice(0, firstRaised).every((size) => size === 5)).toBe(true);
    expect(sizes.slice(firstRaised).every((size) => size === 50)).toBe(true);
    await expectEveryRowOnce(pool, 'items', 'raised');
  });
});

describe('the documented lock key', () => {
  const db = useTestDatabase();

  it('is (LANE_LOCK_BASE + lane, migration id), held for the whole job', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 10));
    const id = await enqueue(pool, { name: 'keyed', work: 'test.probe', table: 'items', batchSize: 5 });
    const seen: boolean[] = [];
    const probe: Work = {
      name: 'test.probe',
      async do() {
        // From another connection, as an operator's script would check it.
        const { rows } = await pool.query('SELECT pg_try_advisory_xact_lock($1, $2::int) AS free', [
          LANE_LOCK_BASE,
          Number(id),
        ]);
        seen.push(rows[0].free);
      },
    };
    await drain(testWorker(pool, { work: [probe] }));

    expect(seen).toEqual([false, false]);
    const { rows } = await pool.query('SELECT pg_try_advisory_xact_lock($1, $2::int) AS free', [
      LANE_LOCK_BASE,
      Number(id),
    ]);
    expect(rows[0].free).toBe(true);
  });
});

describe('live workers', () => {
  const db = useTestDatabase();

  it('announce their work functions while they run, so status can tell who waits for what', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 10));
    await enqueue(pool, {
      name: 'mine',
      work: touch.name,
      table: 'items',
      batchSize: 5,
      status: MigrationStatus.paused,
    });
    await enqueue(pool, { name: 'theirs', work: 'not.deployed.yet', table: 'items', batchSize: 5 });
    const before = await migrationReports(pool);
    expect(before.map((r) => [r.name, r.waitingForWork])).toEqual([
      ['mine', false],
      ['theirs', true],
    ]);
    await resume(pool, 'mine');
    // No live worker has test.touch yet.
    expect((await migrationReports(pool, { name: 'mine' }))[0]?.waitingForWork).toBe(true);

    const worker = testWorker(pool, {
      work: [touch],
      intervalMs: 10_000,
      maxIntervalMs: 10_000,
      startupJitterMs: 10_000,
    });
    const running = worker.run();
    await waitFor(
      async () => (await migrationReports(pool, { name: 'mine' }))[0]?.waitingForWork === false,
      'the worker to announce itself',
    );
    const { rows } = await pool.query('SELECT id, pid, work_names FROM batched_background_migration_workers');
    expect(rows).toEqual([{ id: worker.id, pid: process.pid, work_names: [touch.name] }]);
    expect((await migrationReports(pool, { name: 'theirs' }))[0]?.waitingForWork).toBe(true);

    await worker.stop();
    await running;
    const after = await pool.query('SELECT count(*)::int AS n FROM batched_background_migration_workers');
    expect(after.rows[0].n).toBe(0);
  });
});

describe('throttles', () => {
  const db = useTestDatabase();

  it('hold a worker back while they give a reason, then it drains as usual', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    await enqueue(pool, { name: 'held', work: touch.name, table: 'items', batchSize: 10 });
    const reasons = ['replica far behind', 'replica still behind'];
    const outcomes: string[] = [];
    const worker = testWorker(pool, {
      work: [touch],
      intervalMs: 1,
      maxIntervalMs: 2,
      throttleCheckMs: 0,
      throttle: async () => reasons.shift() ?? false,
      observers: [
        {
          run: (result) =>
            outcomes.push(result.outcome === 'throttled' ? `throttled: ${result.error?.message}` : result.outcome),
        },
      ],
    });

    await worker.run({ untilDone: true });

    expect(outcomes.slice(0, 3)).toEqual([
      'throttled: replica far behind',
      'throttled: replica still behind',
      'migration_started',
    ]);
    expect(outcomes.filter((o) => o === 'job_succeeded')).toHaveLength(3);
    expect((await migrationRow(pool, 'held'))?.status).toBe(MigrationStatus.finished);
  });

  it('are asked again after one throws synchronously (a failing throttle never holds back)', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    await enqueue(pool, { name: 'asked', work: touch.name, table: 'items', batchSize: 10 });
    let asked = 0;
    const throttle = ((): false => {
      asked += 1;
      if (asked === 1) throw new Error('metrics endpoint down');
      return false;
    }) as unknown as Parameters<typeof testWorker>[1]['throttle'];
    const worker = testWorker(pool, {
      work: [touch],
      intervalMs: 1,
      maxIntervalMs: 2,
      throttleCheckMs: 0,
      ...(throttle && { throttle }),
    });

    await worker.run({ untilDone: true });

    expect((await migrationRow(pool, 'asked'))?.status).toBe(MigrationStatus.finished);
    // Once before every run after the first: the failed check did not stick.
    expect(asked).toBeGreaterThan(3);
  });

  it('built in: WAL archive and replica lag read as nothing to hold back for on a lone server without archiving', async () => {
    const { pool } = db();
    expect(await readyWalSegments(pool)).toBeNull();
    expect(await maxReplicaLagBytes(pool)).toBeNull();
    expect(await anyThrottle(walArchiveThrottle(), replicaLagThrottle())(pool)).toBe(false);
  });
});
