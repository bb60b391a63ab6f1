/**
 * The `autovacuum` hold against real autovacuum workers: a routine autovacuum that the
 * migration's own dead rows start, and an autovacuum to prevent wraparound forced by burning
 * xids past a table's autovacuum_freeze_max_age. On a server of the file's own, whose
 * autovacuum looks at each database every second (the shared one's every minute).
 */
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkHealth, resolveHealth } from '../src/bbm/health.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import type { HealthOptions, HoldEvent } from '../src/bbm/types.ts';
import { useOwnCluster } from './support/database.ts';
import { createItems, enqueue, migrationRow, range, testWorker, touch } from './support/engine.ts';
import { runBbm, waitFor } from './support/processes.ts';

const DEFAULTS_CONFIG = fileURLToPath(new URL('./fixtures/defaults.config.ts', import.meta.url));

/** Every page costs the vacuum a 100-ms sleep: a vacuum that runs for seconds on a few pages. */
const CRAWL = 'autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1';

/** The autovacuum running on `table` now (its query text), if any. */
async function autovacuumOn(pool: pg.Pool, table: string): Promise<{ pid: number; query: string } | undefined> {
  const { rows } = await pool.query<{ pid: number; query: string }>(
    `SELECT p.pid, a.query FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a USING (pid)
     WHERE p.relid = $1::regclass AND a.backend_type = 'autovacuum worker'`,
    [table],
  );
  return rows[0];
}

const health = (autovacuum?: HealthOptions['autovacuum']): HealthOptions => ({
  ...(autovacuum === undefined ? {} : { autovacuum }),
  maxTransactionAgeMs: null,
  latency: false,
  checkMs: 50,
  holdMs: 600_000,
});

describe('the autovacuum hold', () => {
  const own = useOwnCluster({ poolMax: 6 });

  beforeAll(async () => {
    const { pool } = own();
    await pool.query("ALTER SYSTEM SET autovacuum_naptime = '1s'");
    await pool.query('SELECT pg_reload_conf()');
  });

  it("runs through a routine autovacuum of its own table by default, and is held for it with 'all'", async () => {
    const { pool } = own();
    await createItems(pool, 'routine', range(1, 20_000));
    await pool.query(
      `ALTER TABLE routine SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1, ${CRAWL})`,
    );
    await pool.query('UPDATE routine SET v = v + 1');
    const vacuum = await waitFor(() => autovacuumOn(pool, 'routine'), 'autovacuum to start on routine');
    expect(vacuum.query).not.toContain('wraparound');

    await enqueue(pool, { name: 'by_default', work: touch.name, table: 'routine', batchSize: 2_000 });
    const holds: HoldEvent[] = [];
    await testWorker(pool, {
      work: [touch],
      observers: [{ hold: (event) => holds.push(event) }],
      health: health(),
    }).run({ untilDone: true });
    expect((await migrationRow(pool, 'by_default'))?.status).toBe(MigrationStatus.finished);
    expect(holds).toEqual([]);
    expect((await autovacuumOn(pool, 'routine'))?.pid, 'the vacuum ran all along').toBe(vacuum.pid);

    await enqueue(pool, { name: 'with_all', work: touch.name, table: 'routine', batchSize: 2_000 });
    const running = testWorker(pool, {
      work: [touch],
      observers: [{ hold: (event) => holds.push(event) }],
      health: health('all'),
    }).run({ untilDone: true });
    await waitFor(async () => holds.length > 0, 'the hold');
    expect(holds).toEqual([
      { kind: 'autovacuum', reason: 'autovacuum on public.routine', migrations: ['with_all'], until: expect.any(Date) },
    ]);
    // A worker that holds for wraparound only (the default) does not lift it meanwhile.
    const byDefault = await checkHealth(pool, resolveHealth(health())!);
    expect(byDefault).toMatchObject({ holds: [], released: [] });
    // Turning autovacuum off on the table cancels the routine vacuum (its lock gives way), and
    // the hold lifts at the next check.
    await pool.query('ALTER TABLE routine SET (autovacuum_enabled = false)');
    await running;
    expect((await migrationRow(pool, 'with_all'))?.status).toBe(MigrationStatus.finished);
  });

  it('bbm run with the default config drains beside a routine autovacuum of its table, not held', async () => {
    const { pool, cluster } = own();
    await createItems(pool, 'routine_cli', range(1, 20_000));
    await pool.query(
      `ALTER TABLE routine_cli SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1, ${CRAWL})`,
    );
    await pool.query('UPDATE routine_cli SET v = v + 1');
    const vacuum = await waitFor(() => autovacuumOn(pool, 'routine_cli'), 'autovacuum to start on routine_cli');
    await enqueue(pool, { name: 'cli_fill', work: touch.name, table: 'routine_cli', batchSize: 2_000 });

    const run = await runBbm(['run', '--until-done', '--config', DEFAULTS_CONFIG], {
      DATABASE_URL: cluster.connectionString(),
    });

    expect(run.code, run.output).toBe(0);
    expect((await migrationRow(pool, 'cli_fill'))?.status).toBe(MigrationStatus.finished);
    expect(run.output).not.toContain('vacuum on');
    expect((await autovacuumOn(pool, 'routine_cli'))?.pid, 'the vacuum ran all along').toBe(vacuum.pid);
  });

  it('holds a migration while an autovacuum to prevent wraparound runs on its table, by default, and lets it go once the vacuum ends', async () => {
    const { pool } = own();
    // Routine autovacuum off: only the wraparound vacuum, which runs whatever the table says, and
    // freezes every row (freeze_min_age 0) so that the table's age falls back under the bound.
    await createItems(pool, 'aging', range(1, 5_000));
    await pool.query(
      `ALTER TABLE aging SET (autovacuum_enabled = false, autovacuum_freeze_max_age = 100000, autovacuum_freeze_min_age = 0, ${CRAWL})`,
    );
    await enqueue(pool, { name: 'fill', work: touch.name, table: 'aging', batchSize: 500 });
    await pool.query(
      'CREATE PROCEDURE burn_xids(n int) LANGUAGE plpgsql AS $$ BEGIN FOR i IN 1..n LOOP PERFORM txid_current(); COMMIT; END LOOP; END $$',
    );
    await pool.query('CALL burn_xids(100500)');
    const vacuum = await waitFor(() => autovacuumOn(pool, 'aging'), 'the wraparound autovacuum to start');
    expect(vacuum.query).toContain('(to prevent wraparound)');

    const holds: HoldEvent[] = [];
    const running = testWorker(pool, {
      work: [touch],
      observers: [{ hold: (event) => holds.push(event) }],
      health: health(),
    }).run({ untilDone: true });
    await waitFor(async () => holds.length > 0, 'the hold');
    expect(holds).toEqual([
      {
        kind: 'autovacuum',
        reason: 'anti-wraparound autovacuum on public.aging',
        migrations: ['fill'],
        until: expect.any(Date),
      },
    ]);
    await running;
    expect(await autovacuumOn(pool, 'aging')).toBeUndefined();
    const { rows } = await pool.query<{ age: number }>(
      "SELECT age(relfrozenxid) AS age FROM pg_class WHERE relname = 'aging'",
    );
    expect(rows[0]!.age).toBeLessThan(100_000);
    expect((await migrationRow(pool, 'fill'))?.status).toBe(MigrationStatus.finished);
  });
});
