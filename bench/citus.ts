/**
 * `npm run bench:citus`: what a migration of a distributed Citus table costs (issue 32), on a
 * cluster of its own (a coordinator and two workers on this machine, test/support/citus.ts). The
 * same rewrite of `rows` rows in batches of `batch`, side by side in one run, over a table of
 * `tenants` tenants distributed by its tenant column (32 shards), the multi-tenant layout, of
 * uneven sizes (tenant ⌊tenants × u³⌋ for u spread evenly over [0, 1): with the defaults, from
 * about 40 rows to 20,000, 1,000 on average, so that many ranges cross from one tenant into the next):
 *
 * - plain loop: one connection to the coordinator, one tenant's rows per `UPDATE` (one shard),
 *   `batch` of them by id ranges found beforehand (untimed);
 * - engine on `id`: a Worker with the defaults at `concurrency` lanes, batching on `id` alone, so
 *   that every range holds rows of every shard (the plan a key that is not the distribution
 *   column gets);
 * - engine on `tenant,id`: the same batching on the key whose first column is the distribution
 *   column, whose ranges within one tenant run, and are cut, on one shard (docs/keys.md);
 * - engine on `tenant,id`, local: the same on a plain table of the coordinator.
 *
 * With `--layout id` the table is distributed by `id` instead, batched on `id`: every range is a
 * statement on all shards, and the plain loop's batches are id ranges too.
 *
 * It prints rows/s of each and the ratios to the engine on `id`. BENCH_CITUS_OPTS adds server
 * options (e.g. `-c log_min_duration_statement=0`); BENCH_CITUS_KEEP=1 prints the servers' logs and
 * keeps the cluster's directory. Needs Citus (docs/citus.md).
 *
 *   npm run bench:citus -- [--rows N] [--batch-size N] [--concurrency N] [--tenants N] [--layout tenant|id] [--health-off] [--json]
 */
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { pino } from 'pino';
import { benchWorker } from './drain.ts';
import type { JobKey, Work } from '../src/bbm/types.ts';
import { createPool } from '../src/store/db.ts';
import { migrateSchema } from '../src/store/apply-schema.ts';
import { citusAvailable, startCitus } from '../test/support/citus.ts';

const { values: flags } = parseArgs({
  options: {
    rows: { type: 'string', default: '1000000' },
    'batch-size': { type: 'string', default: '1000' },
    concurrency: { type: 'string', default: '2' },
    tenants: { type: 'string', default: '1000' },
    layout: { type: 'string', default: 'tenant' },
    'health-off': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
const ROWS = Number(flags.rows);
const BATCH = Number(flags['batch-size']);
const CONCURRENCY = Number(flags.concurrency);
const TENANTS = Number(flags.tenants);
const BY_TENANT = flags.layout === 'tenant';
if (!BY_TENANT && flags.layout !== 'id') throw new Error(`--layout is tenant or id, not ${flags.layout}`);
const say = (text: string) => process.stderr.write(`${text}\n`);
const round2 = (x: number) => Math.round(x * 100) / 100;

const work: Work<JobKey> = {
  name: 'citus.bench',
  async do(job) {
    const result = await job.query(`UPDATE ${job.table} SET hits = hits + 1 WHERE ${job.range.sql}`, job.range.params);
    return result.rowCount ?? undefined;
  },
};

/** Row i is tenant ⌊TENANTS × u³⌋ with u = i × φ mod 1: each tenant's ids spread over the whole id range. */
async function createTable(pool: pg.Pool, table: string, distributed: boolean): Promise<void> {
  await pool.query(`DROP TABLE IF EXISTS ${table}`);
  await pool.query(
    `CREATE TABLE ${table} (tenant integer NOT NULL, id bigint NOT NULL, hits integer NOT NULL DEFAULT 0, payload text,
       PRIMARY KEY (${BY_TENANT ? 'tenant, id' : 'id'}))`,
  );
  if (BY_TENANT) await pool.query(`CREATE INDEX ON ${table} (id)`);
  if (distributed) await pool.query(`SELECT create_distributed_table($1, $2)`, [table, BY_TENANT ? 'tenant' : 'id']);
  await pool.query(
    `INSERT INTO ${table} (tenant, id, payload)
     SELECT floor($2::int * power((i * 0.6180339887498949) % 1, 3))::int, i, md5(i::text) FROM generate_series(1, $1::int) i`,
    [ROWS, TENANTS],
  );
  await pool.query(`VACUUM ANALYZE ${table}`);
}

/** Seconds a single-connection loop takes over the table, BATCH rows an UPDATE. */
async function plainLoop(pool: pg.Pool, table: string): Promise<number> {
  // Each tenant's ids in runs of BATCH, found before the clock starts.
  const { rows: tenantRanges } = await pool.query<{ tenant: number; lo: string; hi: string }>(
    `SELECT tenant, min(id) AS lo, max(id) AS hi FROM (
       SELECT tenant, id, (row_number() OVER (PARTITION BY tenant ORDER BY id) - 1) / $1 AS run FROM ${table}) r
     GROUP BY tenant, run ORDER BY tenant, run`,
    [BATCH],
  );
  const client = await pool.connect();
  const started = performance.now();
  try {
    if (BY_TENANT) {
      for (const { tenant, lo, hi } of tenantRanges)
        await client.query(`UPDATE ${table} SET hits = hits + 1 WHERE tenant = $1 AND id BETWEEN $2 AND $3`, [
          tenant,
          lo,
          hi,
        ]);
    } else {
      for (let start = 1; start <= ROWS; start += BATCH)
        await client.query(`UPDATE ${table} SET hits = hits + 1 WHERE id BETWEEN $1 AND $2`, [
          start,
          start + BATCH - 1,
        ]);
    }
  } finally {
    client.release();
  }
  return (performance.now() - started) / 1000;
}

/** Seconds one Worker takes to drain a migration of the table on `key`, from its start to its last job. */
let migrations = 0;
/** The share of the `tenant,id` migrations' ranges that lie within one tenant, by label. */
const withinOneTenant: Record<string, number> = {};

async function engine(pool: pg.Pool, table: string, key: string, label: string): Promise<number> {
  migrations += 1;
  const name = `${table}_${migrations}`;
  await pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
     VALUES ($1, $2, $3, $4, $5, $6)`,
    [name, BATCH, work.name, table, key, CONCURRENCY],
  );
  let started = 0;
  let last = 0;
  const worker = benchWorker(pool, {
    work: [work],
    lanes: CONCURRENCY,
    health: flags['health-off'] ? false : undefined,
    deployed: true,
    logger: pino({ level: process.env.CITUS_LOG ?? 'silent' }),
    observers: [
      {
        run: (result) => {
          if (result.outcome === 'migration_started') started = performance.now();
          if (result.outcome === 'job_succeeded') last = performance.now();
        },
      },
    ],
  });
  await worker.run({ untilDone: true });
  await worker.close();
  const { rows } = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table} WHERE hits <> 1`);
  if (rows[0]!.n !== 0) throw new Error(`${rows[0]!.n} rows of ${table} were not touched exactly once by ${name}`);
  if (key === 'tenant,id') {
    const { rows: within } = await pool.query<{ share: number }>(
      `SELECT avg((j.min_key->>0 = j.max_key->>0)::int)::float8 AS share FROM batched_background_migration_jobs j
       JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id WHERE m.name = $1`,
      [name],
    );
    withinOneTenant[label] = Math.round(within[0]!.share * 1000) / 1000;
  }
  return (last - started) / 1000;
}

async function main(): Promise<void> {
  if (!citusAvailable()) throw new Error('Citus is not installed here (docs/citus.md)');
  const cluster = await startCitus({ serverOptions: process.env.BENCH_CITUS_OPTS ?? '' });
  const pool = createPool({ connectionString: cluster.url, max: CONCURRENCY + 3 });
  try {
    await migrateSchema(pool);
    const layout = BY_TENANT ? `${TENANTS} tenants, distributed by tenant` : 'distributed by id';
    say(`${ROWS.toLocaleString('en')} rows (${layout}), batch ${BATCH}, ${CONCURRENCY} lanes…`);
    const seconds: Record<string, number> = {};
    const run = async (label: string, distributed: boolean, measure: (table: string) => Promise<number>) => {
      await createTable(pool, 'bench', distributed);
      seconds[label] = await measure('bench');
      await pool.query('DROP TABLE bench');
    };
    await run('plain loop', true, (table) => plainLoop(pool, table));
    await run('engine on id', true, (table) => engine(pool, table, 'id', 'engine on id'));
    if (BY_TENANT) {
      await run('engine on tenant,id', true, (table) => engine(pool, table, 'tenant,id', 'engine on tenant,id'));
      await run('engine on tenant,id, local', false, (table) =>
        engine(pool, table, 'tenant,id', 'engine on tenant,id, local'),
      );
    } else {
      await run('engine on id, local', false, (table) => engine(pool, table, 'id', 'engine on id, local'));
    }
    const rowsPerSec = Object.fromEntries(Object.entries(seconds).map(([k, s]) => [k, Math.round(ROWS / s)]));
    const base = seconds['engine on id']!;
    const result = {
      rows: ROWS,
      batch: BATCH,
      concurrency: CONCURRENCY,
      layout: flags.layout,
      tenants: BY_TENANT ? TENANTS : null,
      rangesWithinOneTenant: withinOneTenant,
      seconds: Object.fromEntries(Object.entries(seconds).map(([k, s]) => [k, round2(s)])),
      rowsPerSec,
      overEngineOnId: Object.fromEntries(Object.entries(seconds).map(([k, s]) => [k, round2(base / s)])),
    };
    if (flags.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else {
      for (const [name, s] of Object.entries(seconds))
        say(
          `${name.padEnd(28)} ${round2(s).toFixed(2).padStart(7)} s ${String(rowsPerSec[name]).padStart(8)} rows/s  ${result.overEngineOnId[name]}× the engine on id`,
        );
      for (const [label, share] of Object.entries(withinOneTenant))
        say(`${label}: ${Math.round(share * 100)} % of the ranges within one tenant`);
    }
  } finally {
    await pool.end();
    if (process.env.BENCH_CITUS_KEEP) say(await cluster.log());
    else await cluster.stop();
  }
}

main().catch((error: unknown) => {
  say(`bench:citus failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exitCode = 1;
});
