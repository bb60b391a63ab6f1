/**
 * pg-bbm on a real Citus cluster (a coordinator and two workers, support/citus.ts): every
 * statement of the engine over a hash-distributed table, a table distributed by another column
 * than the batching key, a reference table and a Citus local table, enqueued as the README says;
 * and exactly once, across worker processes and a SIGKILL, and across a crash between the
 * worker node's commit and the coordinator's. Skipped without Citus unless BBM_REQUIRE_CITUS is set.
 */
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobStatus, MigrationStatus } from '../src/store/codes.ts';
import { createPool } from '../src/store/db.ts';
import { bbm } from './support/cli.ts';
import { citusAvailable, startCitus, type CitusCluster } from './support/citus.ts';
import { finishedJobs, migrationRow } from './support/engine.ts';
import { COMPOSITE_TENANTS_SQL } from './support/keys.ts';
import { runBbm, startBbm, waitFor } from './support/processes.ts';

const CONFIG = fileURLToPath(new URL('./fixtures/citus.config.ts', import.meta.url));

const available = citusAvailable();

/** How each kind of Citus table is made from a plain one. */
interface TableKind {
  kind: string;
  /** Columns and keys; every kind has an `id bigint` batching column and a `touched int` counter. */
  columns: string;
  /** Indexes besides the primary key. */
  indexes?: string;
  /** The Citus call that turns `$t` into its kind. */
  citus: string;
  /** Rows, as a SELECT over g (1 .. n). */
  rows: string;
}

const KINDS: TableKind[] = [
  {
    kind: 'a hash-distributed table, by its id',
    columns: 'id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0',
    citus: "SELECT create_distributed_table('$t', 'id')",
    rows: 'SELECT g FROM g',
  },
  {
    kind: 'a table distributed by another column (tenant) than the batching key',
    // Citus takes no unique index without the distribution column: id has a plain one.
    columns: 'tenant int NOT NULL, id bigint NOT NULL, touched int NOT NULL DEFAULT 0, PRIMARY KEY (tenant, id)',
    indexes: 'CREATE INDEX ON $t (id)',
    citus: "SELECT create_distributed_table('$t', 'tenant')",
    rows: 'SELECT g % 7, g FROM g',
  },
  {
    kind: 'a reference table',
    columns: 'id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0',
    citus: "SELECT create_reference_table('$t')",
    rows: 'SELECT g FROM g',
  },
  {
    kind: 'a Citus local table',
    columns: 'id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0',
    citus: "SELECT citus_add_local_table_to_metadata('$t')",
    rows: 'SELECT g FROM g',
  },
];

/** A table of `kind` named `name`, holding ids 1 .. n less every 9th (holes: ranges are cut by the index). */
async function createTable(pool: pg.Pool, name: string, kind: TableKind, n: number): Promise<void> {
  const at = (text: string) => text.replaceAll('$t', name);
  await pool.query(`CREATE TABLE ${name} (${kind.columns})`);
  if (kind.indexes) await pool.query(at(kind.indexes));
  await pool.query(at(kind.citus));
  await pool.query(
    `INSERT INTO ${name} WITH g AS (SELECT g FROM generate_series(1, ${n}) g WHERE g % 9 <> 4) ${kind.rows}`,
  );
}

/** Every row touched once, every range finished, ranges contiguous, the migration finished. */
async function expectDoneOnce(pool: pg.Pool, table: string, name: string): Promise<void> {
  const { rows } = await pool.query(`SELECT touched, count(*)::int AS n FROM ${table} GROUP BY touched`);
  expect(rows, name).toEqual([{ touched: 1, n: expect.any(Number) }]);
  const jobs = await pool.query<{ min: string; max: string; status: number }>(
    `SELECT j.min_value AS min, j.max_value AS max, j.status FROM batched_background_migration_jobs j
     JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id WHERE m.name = $1 ORDER BY j.min_value`,
    [name],
  );
  expect(jobs.rows.every((j) => j.status === JobStatus.finished)).toBe(true);
  for (let i = 1; i < jobs.rows.length; i += 1) {
    expect(BigInt(jobs.rows[i]!.min), `range ${i}`).toBe(BigInt(jobs.rows[i - 1]!.max) + 1n);
  }
  const migration = await pool.query('SELECT status FROM batched_background_migrations WHERE name = $1', [name]);
  expect(migration.rows[0]?.status).toBe(MigrationStatus.finished);
}

describe.skipIf(!available)('on Citus', () => {
  let citus: CitusCluster;
  let pool: pg.Pool;
  const env = () => ({ DATABASE_URL: citus.url });

  beforeAll(async () => {
    citus = await startCitus();
    pool = createPool({ connectionString: citus.url, max: 6 });
    const migrated = await runBbm(['migrate'], env());
    expect(migrated, migrated.output).toMatchObject({ code: 0 });
  }, 120_000);

  afterAll(async () => {
    await pool?.end();
    await citus?.stop();
  });

  describe('every statement of the engine', () => {
    it.each(KINDS.map((kind, i) => ({ ...kind, table: `t${i}` })))(
      '$kind: enqueued with the README INSERT, started, cut, taken, split, swept, finished',
      { timeout: 120_000 },
      async (kind) => {
        const { table } = kind;
        await createTable(pool, table, kind, 2_000);
        const name = `touch_${table}`;
        // The README's INSERT, with the optional columns left out: no status, no max_value.
        await pool.query(
          `INSERT INTO batched_background_migrations
             (name, min_value, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
           VALUES ($1, 1, 100, 'citus.touch', $2, 'id', 2)`,
          [name, `public.${table}`],
        );

        const drained = await runBbm(['run', '--until-done', '--concurrency', '2', '--config', CONFIG], {
          ...env(),
          BBM_TEST_SLOW_ID: '1000',
        });

        expect(drained, drained.output).toMatchObject({ code: 0 });
        await expectDoneOnce(pool, table, name);
        const { rows } = await pool.query<{ max_value: string; verified: boolean; split: number }>(
          `SELECT m.max_value, m.verified_at IS NOT NULL AS verified,
                  (SELECT count(*)::int FROM batched_background_migration_jobs j
                   WHERE j.batched_background_migration_id = m.id AND j.batch_size < m.batch_size) AS split
           FROM batched_background_migrations m WHERE m.name = $1`,
          [name],
        );
        // The start found the last id (2,000, not a hole); the range holding id 1,000 timed out
        // and was split (halves of 50, then 25); the final sweep checked every range.
        expect(rows[0]).toMatchObject({ max_value: '2000', verified: true });
        expect(rows[0]!.split).toBeGreaterThanOrEqual(2);
        const status = await bbm(['status', '--json', '--name', name], env());
        expect(status.code, status.err).toBe(0);
        expect(JSON.parse(status.out)).toMatchObject([{ name, status: 'finished' }]);
      },
    );

    it('a key of two columns (tenant, id) over a table distributed by tenant: started and cut on its index, split by its middle key', async () => {
      const kind = KINDS[1]!;
      await createTable(pool, 'tk', kind, 2_000);
      await pool.query(
        `INSERT INTO batched_background_migrations
           (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
         VALUES ('touch_tk', 100, 'citus.touch', 'public.tk', 'tenant,id', 2)`,
      );

      await pool.query('DROP TABLE IF EXISTS job_tasks');
      await pool.query('CREATE TABLE job_tasks (first_key jsonb, last_key jsonb, tasks int)');

      const drained = await runBbm(['run', '--until-done', '--concurrency', '2', '--config', CONFIG], {
        ...env(),
        BBM_TEST_SLOW_ID: '1000',
        BBM_TEST_RECORD_TASKS: '1',
      });

      expect(drained, drained.output).toMatchObject({ code: 0 });
      // Tenants of about 254 ids in ranges of 100: each range within one tenant (a tenant's last
      // range ends at its last id), a statement on one shard.
      const tasks = await pool.query<{ within: boolean; tasks: number }>(
        `SELECT DISTINCT first_key->>0 = last_key->>0 AS within, tasks FROM job_tasks`,
      );
      expect(tasks.rows).toEqual([{ within: true, tasks: 1 }]);
      const { rows } = await pool.query(`SELECT touched, count(*)::int AS n FROM tk GROUP BY touched`);
      expect(rows).toEqual([{ touched: 1, n: 1778 }]);
      const migration = await pool.query(
        `SELECT status, min_key, max_key FROM batched_background_migrations WHERE name = 'touch_tk'`,
      );
      expect(migration.rows[0]).toEqual({ status: MigrationStatus.finished, min_key: [0, 7], max_key: [6, 1994] });
      // The range holding (1000 % 7, 1000) timed out and was split by its middle key.
      const split = await pool.query(
        `SELECT count(*)::int AS n FROM batched_background_migration_jobs WHERE batch_size < 100 AND max_key IS NOT NULL`,
      );
      expect(split.rows[0].n).toBeGreaterThanOrEqual(2);
    });

    it('a key (tenant, id) over a table distributed by tenant, tenants large and small: ranges within a tenant where a quarter of a batch is left, each on one shard', async () => {
      await pool.query(
        'CREATE TABLE tv (tenant int NOT NULL, id int NOT NULL, touched int NOT NULL DEFAULT 0, PRIMARY KEY (tenant, id))',
      );
      await pool.query("SELECT create_distributed_table('tv', 'tenant')");
      await pool.query(`INSERT INTO tv (tenant, id) ${COMPOSITE_TENANTS_SQL}`);
      await pool.query('ANALYZE tv');
      await pool.query('DROP TABLE IF EXISTS job_tasks');
      await pool.query('CREATE TABLE job_tasks (first_key jsonb, last_key jsonb, tasks int)');
      await pool.query(
        `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name)
         VALUES ('touch_tv', 10, 'citus.touch', 'public.tv', 'tenant,id')`,
      );

      const drained = await runBbm(['run', '--until-done', '--concurrency', '1', '--config', CONFIG], {
        ...env(),
        BBM_TEST_RECORD_TASKS: '1',
      });

      expect(drained, drained.output).toMatchObject({ code: 0 });
      await expectDoneOnce(pool, 'tv', 'touch_tv');
      // Progress is a share of the table's rows, estimated on its shards (the coordinator's figure is 0).
      const estimate = await pool.query(
        `SELECT total_tuple_count FROM batched_background_migrations WHERE name = 'touch_tv'`,
      );
      expect(estimate.rows[0]).toEqual({ total_tuple_count: '89' });
      const { rows } = await pool.query<{ range: string; tasks: number }>(
        `SELECT (first_key->>0) || ':' || (first_key->>1) || '-' || (last_key->>0) || ':' || (last_key->>1) AS range, tasks
         FROM job_tasks ORDER BY (first_key->>0)::int, (first_key->>1)::int`,
      );
      // Unlike without Citus (COMPOSITE_RANGES), a tenant with fewer than 10 ids left but at least a
      // quarter of 10 ends its range: only tenant 4's one id is crossed from.
      expect(rows.map(({ range, tasks }) => [range, tasks === 1])).toEqual([
        ['1:1-1:3', true],
        ['2:1-2:7', true],
        ['3:1-3:10', true],
        ['3:11-3:15', true],
        ['4:1-5:9', false],
        ['5:10-5:19', true],
        ['5:20-5:23', true],
        ['6:1-6:10', true],
        ['7:1-7:10', true],
        ['7:11-7:20', true],
        ['7:21-7:30', true],
      ]);
      expect(rows.filter(({ tasks }) => tasks !== 1).every(({ tasks }) => tasks === 32)).toBe(true);
    });

    it('bbm enqueue, rehearse, status and finalize over a hash-distributed table', async () => {
      await createTable(pool, 'te', KINDS[0]!, 3_000);
      const enqueued = await bbm(
        [
          'enqueue',
          ...['--name', 'touch_te', '--work', 'citus.touch', '--table', 'public.te', '--column', 'id'],
          ...['--batch-size', '200', '--lanes', '2', '--config', CONFIG],
        ],
        env(),
      );
      expect(enqueued.code, enqueued.err).toBe(0);
      const rehearsed = await bbm(['rehearse', '--name', 'touch_te', '--config', CONFIG], env());
      expect(rehearsed.code, rehearsed.err + rehearsed.out).toBe(0);
      // A rehearsal is rolled back.
      expect((await pool.query('SELECT count(*)::int AS n FROM te WHERE touched > 0')).rows[0].n).toBe(0);

      const finalized = await bbm(['finalize', '--name', 'touch_te', '--config', CONFIG], env());

      expect(finalized.code, finalized.err + finalized.out).toBe(0);
      await expectDoneOnce(pool, 'te', 'touch_te');
      const status = await bbm(['status', '--json', '--name', 'touch_te'], env());
      expect(JSON.parse(status.out)).toMatchObject([{ name: 'touch_te', status: 'finished' }]);
    });
  });
  it('a transaction held open on a worker node holds the migration, naming the node, until it ends', async () => {
    await createTable(pool, 'th', KINDS[0]!, 2_000);
    await pool.query(
      `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name)
       VALUES ('touch_th', 100, 'citus.touch', 'public.th', 'id')`,
    );
    const node = new URL(citus.workerUrls[0]!);
    const nodePool = createPool({ connectionString: citus.workerUrls[0]!, max: 1 });
    const held = await nodePool.connect();
    try {
      await held.query('BEGIN');
      const { rows } = await held.query<{ pid: number }>('SELECT pg_backend_pid() AS pid, txid_current()');
      await new Promise((resolve) => setTimeout(resolve, 400));
      const health = { maxTransactionAgeMs: 300, checkMs: 100, holdMs: 500, latency: false, autovacuum: false };
      const running = startBbm(['run', '--until-done', '--concurrency', '2', '--config', CONFIG], {
        ...env(),
        BBM_TEST_HEALTH: JSON.stringify(health),
      });
      const reason = async () => (await migrationRow(pool, 'touch_th'))?.hold_reason ?? null;
      await waitFor(async () => (await reason()) !== null, 'the hold');
      expect(await reason()).toMatch(
        new RegExp(
          `^a transaction open for \\d+\\.\\ds \\(pid ${rows[0]!.pid}\\) on node 127\\.0\\.0\\.1:${node.port} holds back vacuum \\(limit 0\\.3s\\)$`,
        ),
      );
      const status = await bbm(['status', '--name', 'touch_th', '--config', CONFIG], env());
      expect(status.out).toContain(`on node 127.0.0.1:${node.port}`);
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(await finishedJobs(pool, 'touch_th')).toBe(0);

      await held.query('COMMIT');

      expect(await running.exited, running.output()).toEqual({ code: 0, signal: null });
      await expectDoneOnce(pool, 'th', 'touch_th');
    } finally {
      held.release();
      await nodePool.end();
    }
  });

  it("a VACUUM of one of the table's shards on a worker node holds the migration, naming the shard and the node, until it ends", async () => {
    await pool.query(
      "CREATE TABLE tvac (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0, pad text NOT NULL DEFAULT repeat('x', 500))",
    );
    await pool.query("SELECT create_distributed_table('tvac', 'id')");
    // About 4,000 rows of 500 bytes a shard: 250 pages for the slowed vacuum to crawl through.
    await pool.query('INSERT INTO tvac (id) SELECT generate_series(1, 128000)');
    await pool.query(
      `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name)
       VALUES ('touch_tvac', 8000, 'citus.touch', 'public.tvac', 'id')`,
    );
    const node = new URL(citus.workerUrls[0]!);
    const { rows: shards } = await pool.query<{ shard: string }>(
      `SELECT pg_catalog.shard_name(s.logicalrelid, s.shardid) AS shard
       FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n ON n.groupid = p.groupid
       WHERE s.logicalrelid = 'tvac'::regclass AND n.nodeport = $1 ORDER BY s.shardid LIMIT 1`,
      [Number(node.port)],
    );
    const shard = shards[0]!.shard;
    const nodePool = createPool({ connectionString: citus.workerUrls[0]!, max: 2 });
    const vacuumer = await nodePool.connect();
    try {
      await vacuumer.query('SET vacuum_cost_delay = 50');
      await vacuumer.query('SET vacuum_cost_limit = 1');
      const { rows } = await vacuumer.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      const vacuum = vacuumer.query(`VACUUM ${shard}`).catch((error: Error) => error);
      await waitFor(
        async () =>
          (await nodePool.query('SELECT 1 FROM pg_stat_progress_vacuum WHERE pid = $1', [rows[0]!.pid])).rowCount,
        'the vacuum to start',
      );
      const health = { maxTransactionAgeMs: null, checkMs: 100, holdMs: 500, latency: false };
      const running = startBbm(['run', '--until-done', '--concurrency', '2', '--config', CONFIG], {
        ...env(),
        BBM_TEST_HEALTH: JSON.stringify(health),
      });
      const reason = async () => (await migrationRow(pool, 'touch_tvac'))?.hold_reason ?? null;
      await waitFor(async () => (await reason()) !== null, 'the hold');
      expect(await reason()).toBe(`vacuum on public.${shard} on node 127.0.0.1:${node.port}`);
      expect(await finishedJobs(pool, 'touch_tvac')).toBe(0);

      await nodePool.query('SELECT pg_cancel_backend($1::int)', [rows[0]!.pid]);
      expect(await vacuum).toMatchObject({ code: '57014' });

      expect(await running.exited, running.output()).toEqual({ code: 0, signal: null });
      await expectDoneOnce(pool, 'tvac', 'touch_tvac');
    } finally {
      vacuumer.release();
      await nodePool.end();
    }
  });

  describe('exactly once', () => {
    it(
      '1,000,000 rows of a hash-distributed table, 2 worker processes x 2 lanes, one SIGKILLed mid-job: every row once',
      { timeout: 180_000 },
      async () => {
        const started = Date.now();
        await pool.query('CREATE TABLE big (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)');
        await pool.query("SELECT create_distributed_table('big', 'id')");
        await pool.query('INSERT INTO big (id) SELECT g FROM generate_series(1, 1000000) g');
        const loadedMs = Date.now() - started;
        await pool.query(
          `INSERT INTO batched_background_migrations
             (name, min_value, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
           VALUES ('touch_big', 1, 5000, 'citus.touch', 'public.big', 'id', 4)`,
        );
        const run = ['run', '--concurrency', '2', '--config', CONFIG];
        // The victim sleeps 100 ms inside each job (after its update), so that it is killed mid-job.
        const victim = startBbm(run, { ...env(), BBM_TEST_JOB_SLEEP_MS: '100' });
        const survivor = startBbm(run, env());
        const finished = async () =>
          (
            await pool.query<{ n: number }>(
              `SELECT count(*)::int AS n FROM batched_background_migration_jobs WHERE status = ${JobStatus.finished}`,
            )
          ).rows[0]!.n;
        await waitFor(async () => (await finished()) >= 100, 'half the ranges', 120_000);
        await waitFor(
          async () =>
            (
              await pool.query(
                `SELECT 1 FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()`,
                [`%bbm-citus-sleep pid=${victim.child.pid}%`],
              )
            ).rows.length > 0,
          'the victim mid-job',
        );
        const finishedAtKill = await finished();

        victim.child.kill('SIGKILL');
        expect((await victim.exited).signal).toBe('SIGKILL');
        await waitFor(
          async () => (await migrationRow(pool, 'touch_big'))?.status === MigrationStatus.finished,
          'the survivor to finish',
          150_000,
        );
        survivor.child.kill('SIGTERM');
        expect(await survivor.exited, survivor.output()).toEqual({ code: 0, signal: null });

        await expectDoneOnce(pool, 'big', 'touch_big');
        const { rows } = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM big');
        expect(rows[0]!.n).toBe(1_000_000);
        expect(finishedAtKill).toBeGreaterThanOrEqual(100);
        expect(finishedAtKill).toBeLessThan(200);
        console.log(
          `Citus, 1,000,000 rows, 2 processes x 2 lanes, batch 5,000: loaded in ${loadedMs} ms, drained in ${Date.now() - started - loadedMs} ms (victim killed after ${finishedAtKill} of 200 ranges)`,
        );
      },
    );

    /**
     * A work that writes one shard (a router write) beside pg-bbm's job row on the coordinator. A
     * deferred constraint trigger on that shard sleeps in the worker node's commit (in its PREPARE
     * TRANSACTION under two-phase commit) for the range starting at 51, and the coordinator's
     * backend that waits for it is SIGKILLed there: the coordinator restarts, without the job's
     * commit. In one phase the worker node committed the range's row regardless, and the range
     * runs again: twice in the ledger. Under two-phase commit the node had only prepared it, and
     * Citus' recovery rolls it back: once.
     */
    async function crashBetweenCommits(name: string): Promise<{ committing: string; ledger: number[] }> {
      let committing: string;
      await pool.query(
        `INSERT INTO batched_background_migrations
           (name, min_value, max_value, batch_size, job_signature_name, table_name, column_name)
         VALUES ($1, 1, 100, 10, 'citus.ledger', 'public.ledger_source', 'id')`,
        [name],
      );
      // --skip-migrate: bbm run would set up the two-phase table again (the one-phase case drops it).
      const worker = startBbm(['run', '--skip-migrate', '--config', CONFIG], env());
      try {
        const nodes = citus.workerUrls.map((url) => createPool({ connectionString: url, max: 1 }));
        try {
          committing = await waitFor(async () => {
            for (const node of nodes) {
              const { rows } = await node.query<{ query: string }>(
                `SELECT query FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query ~ '^(COMMIT|PREPARE TRANSACTION)'`,
              );
              if (rows[0]) return rows[0].query.startsWith('COMMIT') ? 'COMMIT' : 'PREPARE TRANSACTION';
            }
            return undefined;
          }, 'a worker node sleeping in its commit of the range at 51');
        } finally {
          await Promise.all(nodes.map((node) => node.end()));
        }
        const { rows } = await pool.query<{ pid: number }>(
          `SELECT pid FROM pg_stat_activity WHERE query LIKE '%bbm_finish_job(%' AND state = 'active' AND pid <> pg_backend_pid()`,
        );
        expect(rows).toHaveLength(1);
        process.kill(rows[0]!.pid, 'SIGKILL');
        // The coordinator restarts (every backend is ended); the worker process reconnects and goes on.
        await waitFor(
          async () => {
            try {
              const done = await pool.query(
                `SELECT 1 FROM batched_background_migrations WHERE name = $1 AND status = $2`,
                [name, MigrationStatus.finished],
              );
              return done.rows.length > 0;
            } catch {
              return false;
            }
          },
          `${name} to finish after the crash`,
          60_000,
        );
      } finally {
        worker.child.kill('SIGTERM');
        await worker.exited;
      }
      // Citus settles the prepared transactions left on the workers from pg_dist_transaction.
      await pool.query('SELECT recover_prepared_transactions()');
      const prepared = await pool.query<{ n: number }>(
        `SELECT sum(result::int)::int AS n FROM run_command_on_workers('SELECT count(*) FROM pg_prepared_xacts')`,
      );
      expect(prepared.rows[0]!.n).toBe(0);
      const { rows } = await pool.query<{ range_start: string }>(
        `SELECT range_start FROM ledger WHERE migration = $1 ORDER BY range_start`,
        [name],
      );
      return { committing, ledger: rows.map((row) => Number(row.range_start)) };
    }

    it(
      "a work that writes one shard commits with its job record: a coordinator crash in the worker node's commit repeats nothing",
      { timeout: 180_000 },
      async () => {
        await pool.query('CREATE TABLE ledger (migration text, range_start bigint, range_end bigint, pid int)');
        await pool.query("SELECT create_distributed_table('ledger', 'range_start')");
        await pool.query(
          `CREATE FUNCTION ledger_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$`,
        );
        // Triggers on a distributed table are created on its shards; Citus asks to be told that is meant.
        const client = await pool.connect();
        try {
          await client.query('SET citus.enable_unsafe_triggers = on');
          await client.query(
            `CREATE CONSTRAINT TRIGGER ledger_slow_commit AFTER INSERT ON ledger DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW WHEN (NEW.range_start = 51) EXECUTE FUNCTION ledger_slow_commit()`,
          );
          await client.query('RESET citus.enable_unsafe_triggers');
        } finally {
          client.release();
        }
        await pool.query('CREATE TABLE ledger_source (id bigint PRIMARY KEY)');
        await pool.query("SELECT create_distributed_table('ledger_source', 'id')");
        await pool.query('INSERT INTO ledger_source SELECT g FROM generate_series(1, 100) g');
        const ranges = [1, 11, 21, 31, 41, 51, 61, 71, 81, 91];

        // Without the table bbm migrate sets up, Citus commits the router write in one phase: the crash repeats the range.
        await pool.query('DROP TABLE bbm_citus_two_phase_marker');
        const onePhase = await crashBetweenCommits('ledger_one_phase');
        expect(onePhase).toEqual({ committing: 'COMMIT', ledger: [...ranges.slice(0, 6), 51, ...ranges.slice(6)] });

        const migrated = await runBbm(['migrate'], env());
        expect(migrated, migrated.output).toMatchObject({ code: 0 });
        expect(migrated.output).not.toMatch(/one phase/);
        const twoPhase = await crashBetweenCommits('ledger_two_phase');
        expect(twoPhase).toEqual({ committing: 'PREPARE TRANSACTION', ledger: ranges });
      },
    );
  });
  // Last: it stops a worker node for good.
  it('a worker node down: the health check goes on without it, says so once, and a migration of a local table drains', async () => {
    await pool.query('CREATE TABLE tl (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)');
    await pool.query('INSERT INTO tl (id) SELECT g FROM generate_series(1, 1000) g');
    await pool.query(
      `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name)
       VALUES ('touch_tl', 100, 'citus.touch', 'public.tl', 'id')`,
    );
    const down = new URL(citus.workerUrls[1]!);
    await citus.stopNode(2);

    const health = { checkMs: 100, holdMs: 500, latency: false, autovacuum: false };
    const drained = await runBbm(
      ['run', '--until-done', '--concurrency', '1', '--config', CONFIG, '--log-format', 'json'],
      { ...env(), BBM_TEST_HEALTH: JSON.stringify(health) },
    );

    expect(drained, drained.output).toMatchObject({ code: 0 });
    await expectDoneOnce(pool, 'tl', 'touch_tl');
    const unread = drained.output.split('\n').filter((line) => line.includes('Citus worker nodes not read'));
    expect(unread).toHaveLength(1);
    expect(unread[0]).toContain(`127.0.0.1:${down.port}`);
  });
});
