/**
 * The keys section of `npm run bench`: the same rewrite (an UPDATE of one column, batches of
 * 1,000) over three tables of as many rows, keyed by
 *
 * - `bigint`: ids 1..rows in insertion order;
 * - `uuid`: gen_random_uuid() (v4, so the key's order is not the heap's);
 * - `tenant_id int, id uuid`: a composite primary key, 100 tenants, uuids as above;
 *
 * each against the keyset loop a team writes by hand on the same key: one statement a batch,
 * `WITH b AS (SELECT key FROM t WHERE key > $last ORDER BY key LIMIT 1000) UPDATE t SET … FROM b
 * WHERE t.key = b.key RETURNING …`, returning the batch's last key (a row-value comparison for the
 * composite key), until a batch comes back empty. On 4 connections the key space is split in 4 at
 * its quartiles, found in SQL beforehand (not timed, as the main section's plain N gets its ranges
 * for free), and each connection runs the same loop over its quarter.
 *
 * The engine: one worker of 1 and of 4 lanes draining a fresh migration (column_name `id` or
 * `tenant_id,id`) whose work function updates `WHERE ${job.range.sql}`, with health holds off as
 * in the main section; then one pass at each lane count with the worker's defaults (health holds
 * on, so slow start begins in one lane), reported against the plain loops' medians.
 *
 * Flags (throughput.ts): --keys-rows (as --rows), --keys-rounds (1), --keys-warmup (1 pass a
 * table), --keys-only (this section alone). The default is a quick look (21 passes: one measured
 * round); the numbers in docs/performance.md come from --keys-only --keys-rounds 4 --keys-warmup 2.
 *
 * Rounds as in the main section, shorter by default: warm-up passes first (the plain loop on 4
 * connections, the quickest pass, over each table: a fresh table's drift is the table's, not the
 * method's), then rounds whose order rotates and alternates direction within each key (the key's
 * four methods run next to one another, the keys in a rotating order), each pass on a freshly
 * vacuumed table with autovacuum off on it; ratios are taken within a round, and the median over
 * rounds is reported. Every pass is checked to have updated every row once.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { benchWorker } from './drain.ts';
import type { JobKey, Work } from '../src/bbm/types.ts';
import { MigrationStatus } from '../src/store/codes.ts';

/** One key as the section batches it. */
interface KeySpec {
  /** What the results call it. */
  name: string;
  table: string;
  /** The migration's column_name. */
  columnName: string;
  /** The key's columns and their types, in index order. */
  columns: ReadonlyArray<{ name: string; type: string }>;
  /** The table's DDL and its rows. */
  create: (rows: number) => string[];
}

const KEYS: KeySpec[] = [
  {
    name: 'bigint',
    table: 'bench_keys_bigint',
    columnName: 'id',
    columns: [{ name: 'id', type: 'bigint' }],
    create: (rows) => [
      'CREATE TABLE bench_keys_bigint (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0, payload text)',
      `INSERT INTO bench_keys_bigint (id, payload) SELECT i, md5(i::text) FROM generate_series(1, ${rows}) i`,
    ],
  },
  {
    name: 'uuid',
    table: 'bench_keys_uuid',
    columnName: 'id',
    columns: [{ name: 'id', type: 'uuid' }],
    create: (rows) => [
      'CREATE TABLE bench_keys_uuid (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), hits integer NOT NULL DEFAULT 0, payload text)',
      `INSERT INTO bench_keys_uuid (payload) SELECT md5(i::text) FROM generate_series(1, ${rows}) i`,
    ],
  },
  {
    name: 'tenant_id int, id uuid',
    table: 'bench_keys_composite',
    columnName: 'tenant_id,id',
    columns: [
      { name: 'tenant_id', type: 'integer' },
      { name: 'id', type: 'uuid' },
    ],
    create: (rows) => [
      `CREATE TABLE bench_keys_composite (tenant_id integer NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(),
         hits integer NOT NULL DEFAULT 0, payload text, PRIMARY KEY (tenant_id, id))`,
      `INSERT INTO bench_keys_composite (tenant_id, payload) SELECT 1 + i % 100, md5(i::text) FROM generate_series(1, ${rows}) i`,
    ],
  },
];

export interface KeysOptions {
  rows: number;
  batch: number;
  /** Measured rounds (every other one runs the methods in the reverse order). */
  rounds: number;
  /** Unmeasured warm-up passes over each table (the plain loop on `lanes` connections, the quickest). */
  warmup: number;
  /** The lane count compared with one lane. */
  lanes: number;
  log: (text: string) => void;
}

/** One key at one lane count. */
export interface KeysResult {
  key: string;
  lanes: number;
  engineRowsPerSec: number;
  plainRowsPerSec: number;
  /** The engine over the plain keyset loop on as many connections, median of the rounds' ratios. */
  ratio: number;
  /** Above one lane: the engine over the engine in one lane, median of the rounds' ratios. */
  speedup?: number;
  /** The engine with the worker's defaults (health holds on), one pass. */
  defaultsRowsPerSec: number;
  /** That pass over the plain loop's median on as many connections. */
  defaultsRatio: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** `"a", "b"` and the like for a key's columns, optionally qualified. */
const list = (key: KeySpec, prefix = '') => key.columns.map((c) => `${prefix}${c.name}`).join(', ');
/** `$n::type, …` for the key's values from placeholder `first`. */
const values = (key: KeySpec, first: number) => key.columns.map((c, i) => `$${first + i}::${c.type}`).join(', ');

/**
 * The hand-written keyset batch: the next `batch` keys after `$1…` (none on a first batch) and up
 * to the bound after them (none on the last quarter), updated, and the last of them returned as
 * text (NULL when no key was left).
 */
function keysetStatement(key: KeySpec, batch: number, from: boolean, upTo: boolean): string {
  const row = `(${list(key)})`;
  const conditions = [
    ...(from ? [`${row} > (${values(key, 1)})`] : []),
    ...(upTo ? [`${row} <= (${values(key, from ? key.columns.length + 1 : 1)})`] : []),
  ];
  const where = conditions.length ? `WHERE ${conditions.join(' AND ')}` : '';
  const join = key.columns.map((c) => `t.${c.name} = b.${c.name}`).join(' AND ');
  // Qualified: a bare name in ORDER BY would be the output column, the key as text.
  const descending = key.columns.map((c) => `u.${c.name} DESC`).join(', ');
  return (
    `WITH b AS (SELECT ${list(key)} FROM ${key.table} ${where} ORDER BY ${list(key)} LIMIT ${batch}), ` +
    `u AS (UPDATE ${key.table} t SET hits = t.hits + 1 FROM b WHERE ${join} RETURNING ${list(key, 't.')}) ` +
    `SELECT ${key.columns.map((c) => `${c.name}::text`).join(', ')} FROM u ORDER BY ${descending} LIMIT 1`
  );
}

/** Keyset batches from after `from` (the start when null) up to `upTo` (the end when null), on one connection. */
async function keysetLoop(
  client: pg.PoolClient,
  key: KeySpec,
  batch: number,
  from: string[] | null,
  upTo: string[] | null,
): Promise<void> {
  const first = keysetStatement(key, batch, false, upTo !== null);
  const next = keysetStatement(key, batch, true, upTo !== null);
  let last = from;
  for (;;) {
    const { rows } = await client.query<string[]>({
      text: last === null ? first : next,
      values: [...(last ?? []), ...(upTo ?? [])],
      rowMode: 'array',
    });
    if (rows.length === 0) return;
    last = rows[0]!;
  }
}

/** The keys at each quantile `i / parts` (0 < i < parts), as text, found on the key's index. */
async function quantiles(pool: pg.Pool, key: KeySpec, parts: number): Promise<string[][]> {
  const { rows } = await pool.query<string[]>({
    text:
      `SELECT ${key.columns.map((c) => `${c.name}::text`).join(', ')} FROM (` +
      `SELECT ${list(key)}, row_number() OVER (ORDER BY ${list(key)}) AS n, count(*) OVER () AS total FROM ${key.table}) s ` +
      `WHERE n IN (SELECT (total * i) / $1 FROM generate_series(1, $1 - 1) i) ORDER BY n`,
    values: [parts],
    rowMode: 'array',
  });
  return rows;
}

/** The plain keyset loop on `bounds.length + 1` connections, each over its part of the key space; ms. */
async function plain(pool: pg.Pool, key: KeySpec, batch: number, bounds: string[][]): Promise<number> {
  const parts = [null, ...bounds].map((from, i) => ({ from, upTo: bounds[i] ?? null }));
  const started = performance.now();
  await Promise.all(
    parts.map(async ({ from, upTo }) => {
      const client = await pool.connect();
      try {
        await keysetLoop(client, key, batch, from, upTo);
      } finally {
        client.release();
      }
    }),
  );
  return performance.now() - started;
}

/** Updates the range's rows through the ready predicate, whatever the key. */
const workOf = (key: KeySpec): Work<JobKey> => ({
  name: `bench.keys.${key.table}`,
  async do(job) {
    await job.query(`UPDATE ${job.table} SET hits = hits + 1 WHERE ${job.range.sql}`, [...job.range.params]);
  },
});

let pass = 0;
/** Migration names unique to this run: a server in DATABASE_URL keeps earlier runs' migrations. */
const RUN = Date.now().toString(36);

/**
 * Drains a fresh migration over the key's table in `lanes` lanes with one worker of that
 * concurrency: health holds off (`defaults` false), or the worker's defaults. A worker run until
 * done returns once a lane finds nothing to take; should it return with the migration still
 * runnable (a health hold makes a take find nothing too), it is logged, any hold waited out (its
 * time counts, as a user waits it) and the migration drained again, as a worker that runs on
 * would. Resolves with the ms until the migration finished.
 */
async function engine(
  pool: pg.Pool,
  key: KeySpec,
  batch: number,
  lanes: number,
  defaults: boolean,
  log: (text: string) => void,
): Promise<number> {
  pass += 1;
  const work = workOf(key);
  const name = `bench_keys_${RUN}_${pass}`;
  await pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
     VALUES ($1, $2, $3, $4, $5, $6)`,
    [name, batch, work.name, key.table, key.columnName, lanes],
  );
  const started = performance.now();
  for (let drains = 1; ; drains += 1) {
    const worker = defaults
      ? benchWorker(pool, { work: [work], lanes, health: undefined, deployed: true })
      : benchWorker(pool, { work: [work], lanes, health: false });
    try {
      await worker.run({ untilDone: true });
    } finally {
      await worker.close();
    }
    const { rows } = await pool.query<{ status: number; hold_reason: string | null; hold_ms: number }>(
      `SELECT status, hold_reason, greatest(0, extract(epoch FROM on_hold_until - now()) * 1000)::int AS hold_ms
       FROM batched_background_migrations WHERE name = $1`,
      [name],
    );
    const row = rows[0]!;
    if (row.status === MigrationStatus.finished) return performance.now() - started;
    const runnable = row.status === MigrationStatus.running || row.status === MigrationStatus.active;
    if (!runnable || drains >= 100) {
      throw new Error(`keys: migration ${name} (${key.name}) ended in status ${row.status} after ${drains} drains`);
    }
    log(
      `  keys: ${key.name}, ${lanes} lanes${defaults ? ', defaults' : ''}: the worker returned with the migration unfinished ` +
        `(${row.hold_reason === null ? 'not held' : `held: ${row.hold_reason}, ${row.hold_ms} ms left`}); drained again`,
    );
    await new Promise((resolve) => setTimeout(resolve, row.hold_ms));
  }
}

/** Runs the section; the tables are dropped at its end. */
export async function keys(pool: pg.Pool, options: KeysOptions): Promise<KeysResult[]> {
  const { rows, batch, rounds, warmup, lanes, log } = options;
  const rate = (ms: number) => Math.round(rows / (ms / 1000));
  const bounds = new Map<KeySpec, string[][]>();
  for (const key of KEYS) {
    await pool.query(`DROP TABLE IF EXISTS ${key.table}`);
    for (const statement of key.create(rows)) await pool.query(statement);
    await pool.query(`ALTER TABLE ${key.table} SET (autovacuum_enabled = false)`);
    await pool.query(`VACUUM ANALYZE ${key.table}`);
    const started = performance.now();
    bounds.set(key, await quantiles(pool, key, lanes));
    log(`  keys: ${key.name}: quartiles found in ${Math.round(performance.now() - started)} ms (not timed)`);
    // On a small table the planner may join a batch to the whole table (a hash join over a
    // sequential scan), and the plain loop then measures that plan, not batching.
    const { rows: plan } = await pool.query<{ 'QUERY PLAN': string }>(
      `EXPLAIN ${keysetStatement(key, batch, true, false)}`,
      bounds.get(key)![0],
    );
    if (plan.some((line) => line['QUERY PLAN'].includes('Seq Scan'))) {
      log(
        `  keys: ${key.name}: the plain loop's batch scans the whole table at ${rows} rows; its rate is not batching's`,
      );
    }
  }
  const methods = (key: KeySpec) => [
    { name: 'plain 1', run: () => plain(pool, key, batch, []) },
    { name: 'engine 1', run: () => engine(pool, key, batch, 1, false, log) },
    { name: `plain ${lanes}`, run: () => plain(pool, key, batch, bounds.get(key)!) },
    { name: `engine ${lanes}`, run: () => engine(pool, key, batch, lanes, false, log) },
  ];
  const names = methods(KEYS[0]!).map((m) => m.name);
  log(
    `keys: ${rows.toLocaleString('en')} rows keyed by ${KEYS.map((k) => k.name).join('; ')}, batches of ${batch}; ` +
      `${warmup} warm-up passes a table, then ${rounds} measured rounds of: ${names.join(', ')}`,
  );
  const times = new Map(KEYS.map((k) => [k, new Map(names.map((n) => [n, [] as number[]]))]));
  const passes = new Map(KEYS.map((k) => [k, 0]));
  const timed = async (key: KeySpec, run: () => Promise<number>) => {
    await pool.query(`VACUUM ${key.table}`);
    passes.set(key, passes.get(key)! + 1);
    return run();
  };
  for (let i = 0; i < warmup; i += 1) {
    for (const key of KEYS) await timed(key, () => plain(pool, key, batch, bounds.get(key)!));
  }
  if (warmup > 0) log(`  keys: ${warmup} warm-up passes a table done`);
  for (let round = 0; round < rounds; round += 1) {
    for (let k = 0; k < KEYS.length; k += 1) {
      const key = KEYS[(k + round) % KEYS.length]!;
      const all = methods(key);
      const rotated = all.map((_, i) => all[(i + round) % all.length]!);
      const order = round % 2 === 0 ? rotated : rotated.reverse();
      for (const method of order)
        times
          .get(key)!
          .get(method.name)!
          .push(await timed(key, method.run));
      log(
        `  keys round ${round + 1}, ${key.name}: ${names.map((n) => `${n} ${rate(times.get(key)!.get(n)!.at(-1)!).toLocaleString('en')}`).join(', ')} rows/s`,
      );
    }
  }
  // One pass with the worker's defaults at each lane count.
  const defaults = new Map<KeySpec, Map<number, number>>();
  for (const key of KEYS) {
    defaults.set(key, new Map());
    for (const n of [1, lanes])
      defaults.get(key)!.set(n, await timed(key, () => engine(pool, key, batch, n, true, log)));
    log(
      `  keys defaults, ${key.name}: ${[1, lanes].map((n) => `engine ${n} ${rate(defaults.get(key)!.get(n)!).toLocaleString('en')}`).join(', ')} rows/s`,
    );
  }
  // Every pass, of every method, updated every row once.
  for (const key of KEYS) {
    const { rows: wrong } = await pool.query<{ n: number; hits: string | null }>(
      `SELECT count(*)::int AS n, pg_catalog.string_agg(DISTINCT hits::text, ', ') AS hits FROM ${key.table} WHERE hits <> $1`,
      [passes.get(key)!],
    );
    if (wrong[0]!.n !== 0) {
      throw new Error(
        `keys: ${wrong[0]!.n} rows of ${key.table} updated ${wrong[0]!.hits} times in ${passes.get(key)} passes, not once a pass`,
      );
    }
    await pool.query(`DROP TABLE ${key.table}`);
  }

  return KEYS.flatMap((key) => {
    const t = times.get(key)!;
    // Rates are rows over time: a round's ratio is the other method's time over this one's.
    const ratioOf = (a: string, b: string) => round3(median(t.get(b)!.map((ms, i) => ms / t.get(a)![i]!)));
    return [1, lanes].map((n) => ({
      key: key.name,
      lanes: n,
      engineRowsPerSec: rate(median(t.get(`engine ${n}`)!)),
      plainRowsPerSec: rate(median(t.get(`plain ${n}`)!)),
      ratio: ratioOf(`engine ${n}`, `plain ${n}`),
      ...(n > 1 && { speedup: ratioOf(`engine ${n}`, 'engine 1') }),
      defaultsRowsPerSec: rate(defaults.get(key)!.get(n)!),
      defaultsRatio: round3(median(t.get(`plain ${n}`)!) / defaults.get(key)!.get(n)!),
    }));
  });
}

/** The section's table as the bench prints it, with the targets (1 lane ≥ 0.9 of plain, N lanes ≥ 1.7× 1 lane). */
export function keysReport(results: readonly KeysResult[], log: (text: string) => void): void {
  log('');
  log('key                      lanes   engine rows/s   plain rows/s   ratio   speedup   defaults rows/s (ratio)');
  for (const r of results) {
    const met = r.lanes === 1 ? r.ratio >= 0.9 : (r.speedup ?? 0) >= 1.7;
    log(
      `${r.key.padEnd(24)} ${String(r.lanes).padStart(5)} ${r.engineRowsPerSec.toLocaleString('en').padStart(15)} ` +
        `${r.plainRowsPerSec.toLocaleString('en').padStart(14)} ${r.ratio.toFixed(3).padStart(7)} ` +
        `${(r.speedup === undefined ? '' : `${r.speedup.toFixed(2)}×`).padStart(9)} ` +
        `${r.defaultsRowsPerSec.toLocaleString('en').padStart(17)} (${r.defaultsRatio.toFixed(3)})` +
        `   ${r.lanes === 1 ? 'ratio ≥ 0.9' : 'speedup ≥ 1.7'}: ${met ? 'met' : 'missed'}`,
    );
  }
}
