/** The gauges behind ops/prometheus/pg-bbm-alerts.yaml: failed, held without progress, finished and not cleared. */
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../src/bbm/metrics.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, range, testWorker, touch } from './support/engine.ts';

describe('the alerting gauges', () => {
  const db = useTestDatabase();

  it('report a held migration by the time since its last finished job, and finished ones by their age', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 20));
    await enqueue(pool, { name: 'stuck', work: touch.name, table: 'items', batchSize: 10, max: 10 });
    await testWorker(pool, { work: [touch] }).run({ untilDone: true });
    await enqueue(pool, { name: 'held', work: touch.name, table: 'items', batchSize: 10 });
    await enqueue(pool, {
      name: 'broken',
      work: touch.name,
      table: 'items',
      batchSize: 10,
      status: MigrationStatus.failed,
    });
    await enqueue(pool, { name: 'sweep@2026-01-01T00:00:00Z', work: touch.name, table: 'items', batchSize: 10 });
    await pool.query(`
      UPDATE batched_background_migration_jobs SET finished_at = now() - interval '8 days';
      UPDATE batched_background_migrations SET finished_at = now() - interval '8 days' WHERE name = 'stuck';
      UPDATE batched_background_migrations SET status = ${MigrationStatus.finished}, finished_at = now() - interval '9 days'
        WHERE name LIKE 'sweep@%';
      UPDATE batched_background_migrations SET created_at = now() - interval '2 hours',
        on_hold_until = now() + interval '1 minute', hold_reason = 'replay_lag: 30 s behind' WHERE name = 'held'`);

    const { registry } = createMetrics({ db: pool });
    const samples = new Map(
      (await registry.metrics())
        .split('\n')
        .filter((line) => /^bbm_(migration_held_seconds|migration_finished_seconds|migrations)\{/.test(line))
        .map((line) => [line.split(' ')[0]!, Number(line.split(' ')[1])]),
    );
    const held = samples.get('bbm_migration_held_seconds{migration="held"}');
    expect(held).toBeGreaterThan(7200 - 60);
    expect(held).toBeLessThan(7200 + 60);
    const finished = samples.get('bbm_migration_finished_seconds{migration="stuck"}');
    expect(finished).toBeGreaterThan(8 * 86400 - 60);
    expect(finished).toBeLessThan(8 * 86400 + 60);
    // A schedule's passes stay by design; a migration not held has no held series.
    expect([...samples.keys()].filter((key) => key.includes('sweep'))).toEqual([]);
    expect(samples.has('bbm_migration_held_seconds{migration="stuck"}')).toBe(false);
    expect(samples.get('bbm_migrations{status="failed"}')).toBe(1);

    // A job finishing restarts the held clock: progress is what the alert waits for.
    await pool.query(
      `UPDATE batched_background_migrations SET started_at = now(), status = ${MigrationStatus.running}, max_value = 20 WHERE name = 'held'`,
    );
    const again = (await registry.metrics()).match(/^bbm_migration_held_seconds\{migration="held"\} (\S+)$/m)?.[1];
    expect(Number(again)).toBeLessThan(60);
  });
});
