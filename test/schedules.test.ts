import type pg from 'pg';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../src/bbm/errors.ts';
import { WorkRegistry } from '../src/bbm/work-registry.ts';
import { parseEvery, resolveSchedules, tickSchedules } from '../src/bbm/schedules.ts';
import type { Schedule } from '../src/bbm/types.ts';
import { createPool } from '../src/store/db.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { bbm } from './support/cli.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, range, testWorker, touch } from './support/engine.ts';

const at = (iso: string) => new Date(iso);

describe('cadences', () => {
  it('cut time into epoch-aligned slots for periods', () => {
    const hourly = parseEvery('1h');
    expect(hourly.slotAt(at('2026-11-22T10:59:59.999Z')).toISOString()).toBe('2026-11-22T10:00:00.000Z');
    expect(hourly.slotAt(at('2026-11-22T11:00:00.000Z')).toISOString()).toBe('2026-11-22T11:00:00.000Z');
    expect(hourly.after(at('2026-11-22T11:00:00.000Z')).toISOString()).toBe('2026-11-22T12:00:00.000Z');
    expect(parseEvery('15m').slotAt(at('2026-11-22T10:44:00Z')).toISOString()).toBe('2026-11-22T10:30:00.000Z');
    expect(parseEvery('30s').slotAt(at('2026-11-22T10:44:45Z')).toISOString()).toBe('2026-11-22T10:44:30.000Z');
  });

  it('use the latest firing at or before now for cron expressions (UTC)', () => {
    const nightly = parseEvery('0 3 * * *');
    expect(nightly.slotAt(at('2026-11-22T02:59:00Z')).toISOString()).toBe('2026-11-21T03:00:00.000Z');
    expect(nightly.slotAt(at('2026-11-22T03:00:00Z')).toISOString()).toBe('2026-11-22T03:00:00.000Z');
    expect(nightly.after(at('2026-11-22T03:00:00Z')).toISOString()).toBe('2026-11-23T03:00:00.000Z');
  });

  it.each(['', 'soon', '0s', '5 minutes', '* * *', '61 * * * *'])('refuse %j', (every) => {
    expect(() => parseEvery(every)).toThrow(ConfigError);
  });

  it('are checked with the rest of a schedule', () => {
    const registry = new WorkRegistry([touch]);
    const ok: Schedule = { name: 'sweep', work: touch.name, table: 'items', column: 'id', batchSize: 10, every: '1h' };
    expect(resolveSchedules([ok], registry)).toHaveLength(1);
    expect(() => resolveSchedules([{ ...ok, work: 'gc.unknown' }], registry)).toThrow(
      /not a work function of this config/,
    );
    expect(() => resolveSchedules([{ ...ok, name: 'a@b' }], registry)).toThrow(/must be letters/);
    expect(() => resolveSchedules([ok, ok], registry)).toThrow(/defined twice/);
    expect(() => resolveSchedules([{ ...ok, batchSize: 0 }], registry)).toThrow(/batchSize/);
  });
});

describe('scheduling passes', () => {
  const db = useTestDatabase();
  const registry = new WorkRegistry([touch]);
  const [sweep] = resolveSchedules(
    [{ name: 'sweep', work: touch.name, table: 'items', column: 'id', batchSize: 10, every: '1h' }],
    registry,
  );
  const tick = (pool: pg.Pool, now: string, retentionMs = 7 * 86_400_000) =>
    tickSchedules(pool, [sweep!], { retentionMs, now: at(now) });
  const passes = async (pool: pg.Pool) =>
    (await pool.query(`SELECT name, status FROM batched_background_migrations ORDER BY id`)).rows as Array<{
      name: string;
      status: number;
    }>;
  const finishAll = (pool: pg.Pool, status: number = MigrationStatus.finished) =>
    pool.query(`UPDATE batched_background_migrations SET status = $1, finished_at = now()`, [status]);

  it('enqueues one pass per slot, never while the last is unfinished, and one catch-up pass after downtime', async () => {
    const { pool } = db();
    expect((await tick(pool, '2026-11-22T10:05:00Z')).enqueued).toEqual(['sweep@2026-11-22T10:00:00.000Z']);
    expect((await tick(pool, '2026-11-22T10:50:00Z')).enqueued).toEqual([]);
    // The next slot came, but the pass has not finished: wait.
    expect((await tick(pool, '2026-11-22T11:01:00Z')).enqueued).toEqual([]);
    await finishAll(pool);
    expect((await tick(pool, '2026-11-22T11:02:00Z')).enqueued).toEqual(['sweep@2026-11-22T11:00:00.000Z']);
    // A failed pass does not block the next slot's.
    await finishAll(pool, MigrationStatus.failed);
    expect((await tick(pool, '2026-11-22T11:30:00Z')).enqueued).toEqual([]);
    expect((await tick(pool, '2026-11-22T12:00:00Z')).enqueued).toEqual(['sweep@2026-11-22T12:00:00.000Z']);
    // Down for five hours: one pass for now, not five.
    await finishAll(pool);
    expect((await tick(pool, '2026-11-22T17:10:00Z')).enqueued).toEqual(['sweep@2026-11-22T17:00:00.000Z']);
    expect((await passes(pool)).map((p) => p.name)).toEqual([
      'sweep@2026-11-22T10:00:00.000Z',
      'sweep@2026-11-22T11:00:00.000Z',
      'sweep@2026-11-22T12:00:00.000Z',
      'sweep@2026-11-22T17:00:00.000Z',
    ]);
  });

  it('enqueues exactly one pass when many workers schedule at once', async () => {
    const { pool, url } = db();
    const pools = Array.from({ length: 3 }, () => createPool({ connectionString: url, max: 2 }));
    try {
      const ticks = await Promise.all(
        Array.from({ length: 30 }, (_, i) =>
          tickSchedules(pools[i % 3]!, [sweep!], { retentionMs: 86_400_000, now: at('2026-11-22T10:05:00Z') }),
        ),
      );
      expect(ticks.flatMap((t) => t.enqueued)).toEqual(['sweep@2026-11-22T10:00:00.000Z']);
      expect(await passes(pool)).toHaveLength(1);
    } finally {
      await Promise.all(pools.map((p) => p.end()));
    }
  });

  it('prunes finished passes, with their jobs, after the retention', async () => {
    const { pool } = db();
    await tick(pool, '2026-11-22T10:05:00Z');
    await pool.query(`INSERT INTO batched_background_migration_jobs (batched_background_migration_id, min_value, max_value, status, attempts)
                      SELECT id, 1, 10, 2, 1 FROM batched_background_migrations`);
    await pool.query(`UPDATE batched_background_migrations SET status = 2, finished_at = now() - interval '8 days'`);

    expect(await tick(pool, '2026-11-22T11:05:00Z')).toMatchObject({
      enqueued: ['sweep@2026-11-22T11:00:00.000Z'],
      pruned: 1,
    });
    // Failed passes are kept for a look, however old.
    await pool.query(`UPDATE batched_background_migrations SET status = 3, finished_at = now() - interval '8 days'`);
    expect(await tick(pool, '2026-11-22T12:05:00Z')).toMatchObject({
      enqueued: ['sweep@2026-11-22T12:00:00.000Z'],
      pruned: 0,
    });

    expect((await passes(pool)).map((p) => p.name)).toEqual([
      'sweep@2026-11-22T11:00:00.000Z',
      'sweep@2026-11-22T12:00:00.000Z',
    ]);
    const jobs = await pool.query('SELECT count(*)::int AS n FROM batched_background_migration_jobs');
    expect(jobs.rows[0].n).toBe(0);
  });

  it('drives a sweep end to end from three workers: one pass, run once', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 45));
    const schedules = [{ name: 'sweep', work: touch.name, table: 'items', column: 'id', batchSize: 10, every: '1h' }];
    const pools = Array.from({ length: 3 }, () => createPool({ connectionString: url, max: 2 }));
    try {
      await Promise.all(
        pools.map((p) =>
          testWorker(p, { work: [touch], schedules, intervalMs: 5, maxIntervalMs: 10 }).run({ untilDone: true }),
        ),
      );
    } finally {
      await Promise.all(pools.map((p) => p.end()));
    }
    const all = await passes(pool);
    expect(all).toHaveLength(1);
    expect(all[0]).toMatchObject({
      name: expect.stringMatching(/^sweep@\d{4}-\d\d-\d\dT\d\d:00:00\.000Z$/),
      status: MigrationStatus.finished,
    });
    const { rows } = await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM items');
    expect(rows[0].t).toEqual([1]);
  });
});

describe('bbm status with schedules', () => {
  const db = useTestDatabase();

  it('lists each schedule with its last pass and when the next is due', async () => {
    const { pool, url } = db();
    const config = fileURLToPath(new URL('./fixtures/scheduled.config.ts', import.meta.url));
    expect((await bbm(['status', '--config', config], { DATABASE_URL: url })).out).toMatch(
      /SCHEDULE\s+EVERY\s+WORK\s+LAST PASS\s+STATUS\s+NEXT DUE\nsweep\s+1h\s+test\.touch\s+-\s+-\s+\d{4}-\d\d-\d\dT\d\d:00:00\.000Z/,
    );
    const registry = new WorkRegistry([touch]);
    const schedules = resolveSchedules(
      [{ name: 'sweep', work: touch.name, table: 'items', column: 'id', batchSize: 10, every: '1h' }],
      registry,
    );
    await tickSchedules(pool, schedules, { retentionMs: 86_400_000, now: at('2026-11-22T10:05:00Z') });

    const result = await bbm(['status', '--config', config], { DATABASE_URL: url });

    expect(result.out).toMatch(
      /sweep\s+1h\s+test\.touch\s+sweep@2026-11-22T10:00:00\.000Z\s+active\s+after the last pass/,
    );
    await pool.query(`UPDATE batched_background_migrations SET status = 2, finished_at = now()`);
    expect((await bbm(['status', '--config', config], { DATABASE_URL: url })).out).toMatch(
      /sweep@2026-11-22T10:00:00\.000Z\s+finished\s+2026-11-22T11:00:00\.000Z/,
    );
    const json = await bbm(['schedules', '--config', config, '--json'], { DATABASE_URL: url });
    expect(JSON.parse(json.out)).toEqual([
      {
        name: 'sweep',
        every: '1h',
        work: 'test.touch',
        lastPass: { name: 'sweep@2026-11-22T10:00:00.000Z', status: 'finished', finishedAt: expect.any(String) },
        nextDue: '2026-11-22T11:00:00.000Z',
      },
    ]);
    expect(await bbm(['schedules'], { DATABASE_URL: url })).toMatchObject({
      code: 2,
      err: expect.stringMatching(/needs --config/),
    });
  });
});

describe('a pass', () => {
  const db = useTestDatabase();

  it('covers the column from 1 to its maximum when it is enqueued', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(5, 77));
    const registry = new WorkRegistry([touch]);
    const schedules = resolveSchedules(
      [{ name: 'sweep', work: touch.name, table: 'items', column: 'id', batchSize: 10, every: '1h' }],
      registry,
    );
    await tickSchedules(pool, schedules, { retentionMs: 86_400_000, now: at('2026-11-22T10:05:00Z') });
    const { rows } = await pool.query(
      'SELECT min_value::int AS min, max_value::int AS max FROM batched_background_migrations',
    );
    expect(rows).toEqual([{ min: 1, max: 77 }]);
  });
});
