/** Health holds, each signal made real: a long-open transaction, a vacuum running on the table. */
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { ConfigError } from '../src/bbm/errors.ts';
import { resolveHealth } from '../src/bbm/health.ts';
import { createMetrics } from '../src/bbm/metrics.ts';
import { migrationReports } from '../src/bbm/status.ts';
import { LatencyLanes } from '../src/bbm/latency-lanes.ts';
import { LatencyWatch } from '../src/bbm/pace.ts';
import type { HoldEvent, LanesEvent, RunResult, Work } from '../src/bbm/types.ts';
import { pino } from 'pino';
import { setMigrationPace } from '../src/store/migration-rows.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, finishedJobs, migrationRow, range, testWorker, touch } from './support/engine.ts';
import { waitFor } from './support/processes.ts';

/** A connection outside the test's pool (which the test database's teardown ends), closed when the test finishes. */
async function openClient(url: string): Promise<pg.Client> {
  const client = new pg.Client(url);
  client.on('error', () => {});
  await client.connect();
  onTestFinished(() => client.end().catch(() => {}));
  return client;
}

describe('health holds', () => {
  const db = useTestDatabase();

  it('hold every migration while a transaction stays open past the bound, once each, and are lifted once it ends', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 40));
    await enqueue(pool, { name: 'first', work: touch.name, table: 'items', batchSize: 5, max: 20 });
    await enqueue(pool, { name: 'second', work: touch.name, table: 'items', batchSize: 5, min: 21, max: 40 });
    const blocker = await openClient(url);
    await blocker.query('BEGIN');
    const { rows } = await blocker.query<{ pid: number }>('SELECT pg_backend_pid() AS pid, txid_current()');
    await new Promise((resolve) => setTimeout(resolve, 300));

    const holds: HoldEvent[] = [];
    const metrics = createMetrics();
    const worker = testWorker(pool, {
      work: [touch],
      observers: [{ hold: (event) => holds.push(event) }, metrics.observer],
      // A hold longer than the test: only lifting it when the cause goes away lets the migrations finish.
      health: { maxTransactionAgeMs: 200, autovacuum: false, checkMs: 50, holdMs: 600_000 },
    });
    const running = worker.run({ untilDone: true });

    const [held] = await waitFor(async () => {
      const reports = await migrationReports(pool);
      return reports.every((r) => r.holdReason !== null) ? reports : undefined;
    }, 'both migrations held');
    const reason = new RegExp(
      `^a transaction open for \\d+\\.\\ds \\(pid ${rows[0]!.pid}\\) holds back vacuum \\(limit 0\\.2s\\)$`,
    );
    expect(held?.holdReason).toMatch(reason);
    // Held for as long as the transaction stays open: several checks extend the hold, no job runs.
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(await finishedJobs(pool, 'first')).toBe(0);
    expect(await finishedJobs(pool, 'second')).toBe(0);
    expect(holds).toEqual([
      // The checks that extend the hold rewrite its reason (the transaction's age) without an event.
      {
        kind: 'transaction_age',
        reason: expect.stringMatching(reason),
        migrations: ['first', 'second'],
        until: expect.any(Date),
      },
    ]);

    await blocker.query('COMMIT');
    await running;
    expect((await migrationRow(pool, 'first'))?.status).toBe(MigrationStatus.finished);
    expect((await migrationRow(pool, 'second'))?.status).toBe(MigrationStatus.finished);
    const touched = await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM items');
    expect(touched.rows[0].t).toEqual([1]);
    expect(await metrics.registry.getSingleMetricAsString('bbm_holds_total')).toContain(
      'bbm_holds_total{reason="transaction_age"} 2',
    );
  });

  it('hold only the migration whose table is being vacuumed; the others carry on', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 30));
    await pool.query(
      'CREATE TABLE bloated (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0, touched int NOT NULL DEFAULT 0)',
    );
    await pool.query(`ALTER TABLE bloated SET (autovacuum_enabled = false)`);
    await pool.query('INSERT INTO bloated (id) SELECT generate_series(1, 20000)');
    await pool.query('UPDATE bloated SET v = 1');
    await enqueue(pool, { name: 'on_bloated', work: touch.name, table: 'bloated', batchSize: 5000 });
    await enqueue(pool, { name: 'on_items', work: touch.name, table: 'items', batchSize: 5 });

    // A VACUUM slowed down to a crawl (cost-based delay after every page): a vacuum that runs a while.
    const vacuumer = await openClient(url);
    await vacuumer.query('SET vacuum_cost_delay = 50');
    await vacuumer.query('SET vacuum_cost_limit = 1');
    const { rows } = await vacuumer.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const vacuum = vacuumer.query('VACUUM bloated').catch((error: Error) => error);
    await waitFor(
      async () =>
        (await pool.query("SELECT 1 FROM pg_stat_progress_vacuum WHERE relid = 'bloated'::regclass")).rowCount,
      'the vacuum to start',
    );

    const holds: HoldEvent[] = [];
    const worker = testWorker(pool, {
      work: [touch],
      observers: [{ hold: (event) => holds.push(event) }],
      health: { maxTransactionAgeMs: null, checkMs: 50, holdMs: 600_000 },
    });
    const running = worker.run({ untilDone: true });

    await waitFor(
      async () => (await migrationRow(pool, 'on_items'))?.status === MigrationStatus.finished,
      'on_items to finish',
    );
    const [report] = await migrationReports(pool, { name: 'on_bloated' });
    expect(report).toMatchObject({ holdReason: 'vacuum on public.bloated' });
    expect(await finishedJobs(pool, 'on_bloated')).toBe(0);
    expect(holds).toEqual([
      { kind: 'autovacuum', reason: 'vacuum on public.bloated', migrations: ['on_bloated'], until: expect.any(Date) },
    ]);

    await pool.query('SELECT pg_cancel_backend($1)', [rows[0]!.pid]);
    expect(await vacuum).toMatchObject({ code: '57014' });
    await running;
    expect((await migrationRow(pool, 'on_bloated'))?.status).toBe(MigrationStatus.finished);
    expect(await finishedJobs(pool, 'on_bloated')).toBe(4);
  });

  it("shed a migration's lanes when its jobs slow down past their norm, for every worker, and grow them back once healthy", async () => {
    const { pool } = db();
    // Enough ranges (2,000) that the migration cannot finish before the lanes have grown back.
    await createItems(pool, 'items', range(1, 20_000));
    const id = await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 4 WHERE id = $1', [id]);
    // Slow jobs take `slowdown` times the slowest fast job as the engine timed it (the work's time,
    // which the controller judges): past the factor against any norm, on any machine, since the
    // norm averages jobs that were not pressure, fast ones only when every slow one is. A fixed
    // time is not: on a loaded 2-core machine fast jobs take 20-35 ms, a 50 ms job is under 3x,
    // and the norm, which learns from jobs under the factor, rises to the slow ones: no shed.
    const latencyFactor = 3;
    const slowdown = latencyFactor + 1;
    let slow = false;
    let slowestFastMs = 0;
    const slowRanges = new Set<string>();
    const sometimesSlow: Work = {
      name: touch.name,
      async do(job) {
        const started = performance.now();
        await touch.do(job);
        // Jobs that wait rather than compute (5 ms), so that more lanes do not slow each one down on
        // a 2-core machine; then the database slowing the work down.
        if (!slow) {
          await job.query('SELECT pg_sleep(0.005)');
          return;
        }
        slowRanges.add(String(job.start));
        // Asked again after each sleep: a fast job still running when the slowdown began may end slower.
        for (;;) {
          const leftMs = slowdown * slowestFastMs - (performance.now() - started);
          if (leftMs <= 0) return;
          await job.query('SELECT pg_sleep($1)', [leftMs / 1000]);
        }
      },
    };
    const changes: LanesEvent[] = [];
    const worker = testWorker(pool, {
      work: [sometimesSlow],
      concurrency: 4,
      observers: [
        { lanes: (event) => changes.push(event) },
        {
          // Told before the controller judges the job.
          run: ({ outcome, job }) => {
            if (outcome === 'job_succeeded' && job && !slowRanges.has(String(job.start)))
              slowestFastMs = Math.max(slowestFastMs, job.durationMs);
          },
        },
      ],
      health: {
        autovacuum: false,
        maxTransactionAgeMs: null,
        maxReplayLagBytes: null,
        maxWalArchiveReady: null,
        checkMs: 100,
        latencyFactor,
      },
    });
    const running = worker.run({ untilDone: true });
    const lanesRow = async () =>
      (
        await pool.query<{ l: number | null; reason: string | null }>(
          'SELECT lanes_allowed AS l, lanes_reason AS reason FROM batched_background_migrations WHERE id = $1',
          [id],
        )
      ).rows[0]!;
    const lanesAllowed = async () => (await lanesRow()).l;
    try {
      // Slow start: one lane first, then one more every check while jobs stay fast, up to all 4.
      // Each allowance below all 4 says why, in the same row (bbm status, the status page).
      const started = await waitFor(async () => {
        const row = await lanesRow();
        return row.l === 1 ? row : undefined;
      }, 'the slow start in one lane');
      expect(started.reason).toBe('slow start');
      const grown = await waitFor(async () => {
        const row = await lanesRow();
        return row.l === null ? row : undefined;
      }, 'the lanes to grow to all 4');
      expect(grown.reason).toBeNull();
      // The change is told after its UPDATE returns, which another connection may see first.
      const grownTo = () => changes.filter((c) => c.direction === 'grown').map((c) => c.to);
      await waitFor(async () => grownTo().includes(4), 'the growth to 4 told to the observers');
      // (Jobs this short are noisy: a stray slow one may shed a lane on the way, grown back after.)
      expect(grownTo()).toEqual(expect.arrayContaining([2, 3, 4]));

      slow = true;
      await waitFor(async () => (await lanesAllowed()) === 1, 'the lanes to be shed down to 1');
      // The change is told after its UPDATE returns, which another connection may see first.
      await waitFor(
        async () => changes.filter((c) => c.direction === 'shed').at(-1)?.to === 1,
        'the shed down to 1 told to the observers',
      );
      const [report] = await migrationReports(pool, { name: 'fill' });
      expect(report).toMatchObject({ lanes: 4, lanesAllowed: 1, lanesReason: 'latency' });
      // The jobs already running in higher lanes finish; then one lane works.
      await waitFor(
        async () => (await migrationReports(pool, { name: 'fill' }))[0]!.lanesInUse <= 1,
        'one lane in use',
      );

      const shedTold = changes.length;
      slow = false;
      const back = await waitFor(async () => {
        const row = await lanesRow();
        return row.l === null ? row : undefined;
      }, 'the lanes to grow back to all 4');
      expect(back.reason).toBeNull();
      // Told after the UPDATE returns, as above; and a stray slow job may shed a lane again after it.
      const regrown = await waitFor(async () => {
        const to4 = changes.findIndex((c, i) => i >= shedTold && c.direction === 'grown' && c.to === 4);
        return to4 >= 0 && changes.slice(shedTold, to4 + 1);
      }, 'the growth back to 4 told to the observers');
      // Additive increase, multiplicative decrease: one lane back at a time, halved on pressure (a
      // slow job still in flight when the slowdown ended may shed once more), ending at all 4.
      for (const change of changes) {
        expect(change.to).toBe(
          change.direction === 'grown' ? change.from + 1 : Math.max(1, Math.floor(change.from / 2)),
        );
      }
      expect(regrown.at(-1)).toMatchObject({ direction: 'grown', from: 3, to: 4 });
    } finally {
      await worker.stop();
      await running;
    }

    // An operator's lanes win over the controller's allowance.
    await pool.query(
      "UPDATE batched_background_migrations SET lanes_allowed = 1, lanes_reason = 'latency' WHERE id = $1",
      [id],
    );
    await setMigrationPace(pool, 'fill', { maxParallelJobs: 3 });
    expect(await lanesRow()).toEqual({ l: null, reason: null });
  });

  it('record the WAL each job wrote, and hold a migration that writes past its WAL budget', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 5000));
    await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 50 });
    const holds: HoldEvent[] = [];
    const metrics = createMetrics();
    const worker = testWorker(pool, {
      work: [touch],
      observers: [{ hold: (event) => holds.push(event) }, metrics.observer],
      // 100 B/s: one job's WAL is kilobytes, so a hold lasts most of the 10-second window.
      health: { autovacuum: false, maxTransactionAgeMs: null, maxWalBytesPerSecond: 100, checkMs: 50 },
    });
    const running = worker.run({ untilDone: true });
    let finishedWhenHeld = 0;
    try {
      const [report] = await waitFor(async () => {
        const reports = await migrationReports(pool, { name: 'fill' });
        finishedWhenHeld = await finishedJobs(pool, 'fill');
        return reports[0]?.holdReason ? reports : undefined;
      }, 'the WAL budget to hold the migration');
      const heldAt = Date.now();
      expect(report?.holdReason).toMatch(/^WAL budget: [\d.]+ kB\/s over the last 10s \(limit 0\.1 kB\/s\)$/);
      // Held for as long as its 10-second average needs to fall back within the budget: at most the window.
      expect(report!.onHoldUntil!.getTime() - heldAt).toBeLessThanOrEqual(10_500);
      expect(report!.onHoldUntil!.getTime() - heldAt).toBeGreaterThan(1_000);
      // While held, no job starts: the one in flight when the hold was set may finish, no other.
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(await finishedJobs(pool, 'fill')).toBeLessThanOrEqual(finishedWhenHeld + 1);
    } finally {
      await worker.stop();
      await running;
    }

    expect(holds).toMatchObject([{ kind: 'wal_budget', migrations: ['fill'] }]);
    const jobs = await pool.query<{ wal: string | null }>(
      'SELECT wal_bytes AS wal FROM batched_background_migration_jobs WHERE status = 2',
    );
    expect(jobs.rows.length).toBeGreaterThan(0);
    for (const job of jobs.rows) expect(Number(job.wal)).toBeGreaterThan(0);
    const total = jobs.rows.reduce((sum, job) => sum + Number(job.wal), 0);
    expect(await metrics.registry.getSingleMetricAsString('bbm_wal_bytes_total')).toContain(
      `bbm_wal_bytes_total{migration="fill"} ${total}`,
    );
  });

  it('hold every migration while the replica lag source reports too much, and lift it when it drops (a faked source: no replica here)', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 40));
    await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 5 });
    let lag: number | null = 200 * 1024 * 1024;
    const holds: HoldEvent[] = [];
    const worker = testWorker(pool, {
      work: [touch],
      observers: [{ hold: (event) => holds.push(event) }],
      health: {
        autovacuum: false,
        maxTransactionAgeMs: null,
        replayLagBytes: () => Promise.resolve(lag),
        checkMs: 50,
        holdMs: 600_000,
      },
    });
    const running = worker.run({ untilDone: true });
    try {
      const [report] = await waitFor(async () => {
        const reports = await migrationReports(pool, { name: 'fill' });
        return reports[0]?.holdReason ? reports : undefined;
      }, 'the replica lag hold');
      expect(report?.holdReason).toBe('a replica replays 200.0 MB behind (limit 64.0 MB)');
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(await finishedJobs(pool, 'fill')).toBe(0);
    } finally {
      lag = 1024; // the replica catches up: the hold is lifted at the next check
      await running;
    }
    expect(holds).toMatchObject([{ kind: 'replay_lag', migrations: ['fill'] }]);
    expect((await migrationRow(pool, 'fill'))?.status).toBe(MigrationStatus.finished);
  });

  it('hold every migration while a logical slot nobody consumes retains more WAL than the bound, and lift it once the slot is dropped', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 2_000));
    await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 5 });
    // A CDC consumer that stopped reading: its slot keeps every byte of WAL written from now on.
    const slot = `bbm_test_${Math.random().toString(36).slice(2, 10)}`;
    await pool.query(`SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, [slot]);
    const holds: HoldEvent[] = [];
    const worker = testWorker(pool, {
      work: [touch],
      observers: [{ hold: (event) => holds.push(event) }],
      health: {
        autovacuum: false,
        maxTransactionAgeMs: null,
        maxReplayLagBytes: null,
        maxSlotRetainedBytes: 32 * 1024,
        checkMs: 50,
        holdMs: 600_000,
      },
    });
    const running = worker.run({ untilDone: true });
    let dropped = false;
    try {
      const [report] = await waitFor(async () => {
        const reports = await migrationReports(pool, { name: 'fill' });
        return reports[0]?.holdReason ? reports : undefined;
      }, 'the slot hold');
      expect(report?.holdReason).toMatch(
        new RegExp(`^replication slot ${slot} \\(logical\\) retains [\\d.]+ [kM]B of WAL \\(limit 32\\.0 kB\\)$`),
      );
      // Held: the job in flight may finish, then none starts.
      const atHold = await finishedJobs(pool, 'fill');
      await new Promise((resolve) => setTimeout(resolve, 400));
      expect(await finishedJobs(pool, 'fill')).toBeLessThanOrEqual(atHold + 1);
      expect(await finishedJobs(pool, 'fill')).toBeLessThan(400);
      await pool.query('SELECT pg_drop_replication_slot($1)', [slot]);
      dropped = true;
      await running;
    } finally {
      if (!dropped) await pool.query('SELECT pg_drop_replication_slot($1)', [slot]).catch(() => {});
      await worker.stop();
    }
    expect(holds.map((hold) => hold.kind)).toContain('replication_slot');
    expect((await migrationRow(pool, 'fill'))?.status).toBe(MigrationStatus.finished);
  });

  it('are off with health: false', async () => {
    const { pool, url } = db();
    // A vacuum running on the table, which the default health options (autovacuum: true) hold the
    // migration for, and two lanes, which the default latency controller starts in one.
    await pool.query(
      'CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0, touched int NOT NULL DEFAULT 0)',
    );
    await pool.query('ALTER TABLE items SET (autovacuum_enabled = false)');
    await pool.query('INSERT INTO items (id) SELECT generate_series(1, 20000)');
    await pool.query('UPDATE items SET v = 1');
    const id = await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 5000 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 2 WHERE id = $1', [id]);
    const vacuumer = await openClient(url);
    await vacuumer.query('SET vacuum_cost_delay = 50');
    await vacuumer.query('SET vacuum_cost_limit = 1');
    const { rows } = await vacuumer.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const vacuum = vacuumer.query('VACUUM items').catch((error: Error) => error);
    await waitFor(
      async () => (await pool.query("SELECT 1 FROM pg_stat_progress_vacuum WHERE relid = 'items'::regclass")).rowCount,
      'the vacuum to start',
    );

    const holds: HoldEvent[] = [];
    const lanes: LanesEvent[] = [];
    const worker = testWorker(pool, {
      work: [touch],
      concurrency: 2,
      observers: [
        {
          // A hold would keep a drain waiting for as long as the vacuum runs: stop at once.
          hold: (event) => void (holds.push(event), worker.stop()),
          lanes: (event) => lanes.push(event),
        },
      ],
      health: false,
    });
    try {
      await worker.run({ untilDone: true });
      // Still vacuuming: the migration finished beside it.
      expect((await pool.query("SELECT 1 FROM pg_stat_progress_vacuum WHERE relid = 'items'::regclass")).rowCount).toBe(
        1,
      );
    } finally {
      await pool.query('SELECT pg_cancel_backend($1)', [rows[0]!.pid]);
      await vacuum;
    }
    expect((await migrationRow(pool, 'fill'))?.status).toBe(MigrationStatus.finished);
    expect(holds).toEqual([]);
    expect(lanes).toEqual([]);
    const row = await pool.query('SELECT hold_reason, lanes_allowed FROM batched_background_migrations WHERE id = $1', [
      id,
    ]);
    expect(row.rows).toEqual([{ hold_reason: null, lanes_allowed: null }]);
  });

  it.each([
    [{ maxTransactionAgeMs: -1 }, /health.maxTransactionAgeMs must be a number of at least 0, or null/],
    [{ checkMs: 0 }, /health.checkMs must be an integer from 1/],
    [{ holdMs: 1.5 }, /health.holdMs must be an integer/],
    [
      { autovacuum: 'yes' as unknown as boolean },
      /health.autovacuum must be 'wraparound', 'all', true or false; got "yes"/,
    ],
    [{ commitLatencyFactor: 1 }, /health.commitLatencyFactor must be a number above 1, or null/],
    [{ commitLatencyFactor: Number.POSITIVE_INFINITY }, /health.commitLatencyFactor must be a number above 1/],
  ])('refuse bad options: %j', (options, message) => {
    expect(() => resolveHealth(options)).toThrow(message);
    expect(() => resolveHealth(options)).toThrow(ConfigError);
  });

  it.each([
    [undefined, 'wraparound'],
    [true, 'wraparound'],
    ['wraparound', 'wraparound'],
    ['all', 'all'],
    [false, false],
  ] as const)('read autovacuum: %j as %j', (autovacuum, resolved) => {
    expect(resolveHealth(autovacuum === undefined ? {} : { autovacuum })?.autovacuum).toBe(resolved);
  });
});

describe('the latency controller', () => {
  const db = useTestDatabase();

  it('grows lanes back after a shed at once, though it found them at their most just before', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 10));
    const id = await enqueue(pool, { name: 'steered', work: touch.name, table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 2, status = 4 WHERE id = $1', [id]);
    const lanes = new LatencyLanes(new LatencyWatch(3), {
      db: () => pool,
      checkMs: 600_000,
      growsThroughProbes: false,
      pace: { setDutyCycle: () => {}, wakeLanes: () => {} },
      log: pino({ level: 'silent' }),
      tell: () => {},
    });
    // Jobs of 10 rows: 1 ms a row is the norm, 5 ms a row is pressure; each begun after the last change.
    const job = async (msPerRow: number) => {
      await new Promise((resolve) => setTimeout(resolve, 2));
      const result: RunResult = {
        outcome: 'job_succeeded',
        runId: 'r',
        durationMs: 0,
        migration: { id, name: 'steered', work: touch.name },
        job: { id: 1n, start: 1n, end: 10n, attempt: 1, batchSize: 10, lane: 0, rows: 10, durationMs: msPerRow * 10 },
      };
      await lanes.follow(result)?.run();
    };
    const allowed = async () =>
      (await pool.query('SELECT lanes_allowed FROM batched_background_migrations WHERE id = $1', [id])).rows[0]
        .lanes_allowed as number | null;
    for (let i = 0; i < 5 + 4; i += 1) await job(1); // learned, then healthy at its most lanes: full for a check
    expect(await allowed()).toBeNull();
    await job(5);
    expect(await allowed()).toBe(1);
    for (let i = 0; i < 4; i += 1) await job(1);
    expect(await allowed()).toBeNull();
  });
});
