/**
 * `npm run bench`: the engine against the plain loops it replaces, side by side on one database.
 *
 * Every method rewrites every row of a 1,000,000-row table in batches of 1,000:
 *
 * - plain, 1 connection: each batch's end found with the same index query the engine uses, then
 *   `UPDATE … WHERE id BETWEEN`, one autocommitted statement each (what a team writes by hand);
 * - plain, N connections: the same UPDATEs over ranges precomputed once, shared out to N
 *   connections (the physical baseline for N connections: no cutting, no bookkeeping);
 * - exactly-once, N connections: the same ranges written beforehand as rows, each taken with
 *   `FOR UPDATE SKIP LOCKED` and marked done in its UPDATE's transaction (the least bookkeeping
 *   that runs each range exactly once: no cutting, no engine);
 * - with --statements, statements, N connections: the engine's own statements over the same
 *   ranges written beforehand as a migration's jobs, chained as a runner chains them, with none of
 *   the engine's JavaScript (engineStatements);
 * - engine, N lanes: one worker with `concurrency` N draining a migration with
 *   `max_parallel_jobs` N whose work function runs the same UPDATE, health holds off;
 * - defaults, N lanes (the largest N): the same with the worker's defaults (health holds, slow
 *   start and the latency controller on, and its waits: `intervalMs` 10 s), what a user gets;
 * - workers Nx1: N workers of concurrency 1, each on a pool of its own, with the defaults,
 *   draining one N-lane migration, as N `bbm run --concurrency 1` processes would.
 *
 * A fresh table speeds up over its first rewrites, and whichever method runs later in a round
 * gains from that drift, so: unmeasured warm-up passes first, then rounds whose order rotates
 * and alternates direction. A ratio is taken within each round and the median over rounds is
 * reported; rows/s are each method's median pass. Every pass starts on a freshly vacuumed table
 * (vacuumItems), so that no pass is charged a vacuum of its predecessor's dead rows. Then two
 * single runs: adaptive sizing from batch 100 toward 200 ms jobs (on a table of its own,
 * --adaptive-rows), and four one-lane workers on one one-lane migration (how many transactions
 * the locked-out workers cost per job). Last, the keys section (keys.ts): the same rewrite keyed by
 * bigint, uuid and (tenant_id, id uuid), the engine in 1 and 4 lanes against a hand-written keyset
 * loop on as many connections. Then the verification section (verify.ts): a copy with and without
 * its check, the final sweep's share of the copy's time, and bbm verify's.
 *
 *   npm run bench -- [--rows N] [--batch-size N] [--lanes 2,4] [--pairs N] [--warmup N] [--adaptive-rows N] [--statements] [--cpu]
 *                    [--keys-rows N] [--keys-rounds N] [--keys-warmup N] [--keys-only]
 *                    [--verify-rows N] [--verify-rounds N] [--verify-only] [--adaptive-only] [--foreground-only] [--json]
 *
 * With --json, one JSON object on the last line of stdout: { rows, batchSize, rawRowsPerSec,
 * engineRowsPerSec, ratio, defaults: { lanes, rowsPerSec, ratioToHealthOff, workersRowsPerSec, workersRatioToPlain,
 * workersRatioToOneWorker }, lanes: [{ lanes, engineRowsPerSec, rawRowsPerSec, ratio, speedup,
 * exactlyOnceRowsPerSec, exactlyOnceRatio, ratioToExactlyOnce, and with --statements statementsRowsPerSec,
 * statementsToExactlyOnce, ratioToStatements }],
 * adaptive: { targetMs, rows, convergedAtJob, withinShare, ceilingShare, jobs }, busy: { workers, lanes, transactionsPerJob,
 * oneWorkerTransactionsPerJob }, with --cpu cpu: { [method]: { busyUs, idleUs, databaseUs, benchUs } } (see cpu.ts), foreground: { rate, lanes, baselineP99Ms, unthrottledP99Ms, heldP99Ms,
 * unthrottledRowsPerSec, heldRowsPerSec, commitLatencyFactor, guardedP99Ms, guardedRowsPerSec, curve: [{ lanes,
 * batchSize, p99Ms, rowsPerSec }] }, keys: [{ key, lanes, engineRowsPerSec, plainRowsPerSec, ratio, speedup (above 1 lane),
 * defaultsRowsPerSec, defaultsRatio }], verify: { rows, lanes, plainRowsPerSec, checkedRowsPerSec, checkedCost,
 * sweepShare, verifyShare, rehearsedDuration, rehearsedWal } } (see foreground.ts, keys.ts, verify.ts). With --keys-only, { rows, batchSize, keys };
 * with --verify-only, { verify }; with --adaptive-only, { adaptive }; with --foreground-only, { foreground } (on
 * a fresh table rewritten --warmup times first; the protected phase's controller decisions on stderr).
 */
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { pino } from 'pino';
import { cpuMeter, perJob, type CpuPerJob } from './cpu.ts';
import { benchWorker, drain } from './drain.ts';
import { foreground, type ForegroundResult } from './foreground.ts';
import { keys, keysReport } from './keys.ts';
import { verifyBench, verifyReport } from './verify.ts';
import { Worker } from '../src/bbm/worker.ts';
import type { RunResult, Work } from '../src/bbm/types.ts';
import { createPool } from '../src/store/db.ts';
import { databaseFromEnv } from '../src/dev/embedded-postgres.ts';
import { migrateSchema } from '../src/store/apply-schema.ts';
import { finishJobText } from '../src/store/jobs.ts';
import { claim, parseTake, runPrologue, takeRowsOf } from '../src/store/run-transaction.ts';

const { values: flags } = parseArgs({
  options: {
    rows: { type: 'string', default: '1000000' },
    'batch-size': { type: 'string', default: '1000' },
    lanes: { type: 'string', default: '2,4' },
    pairs: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '2' },
    json: { type: 'boolean', default: false },
    statements: { type: 'boolean', default: false },
    cpu: { type: 'boolean', default: false },
    'adaptive-rows': { type: 'string', default: '4000000' },
    'keys-rows': { type: 'string' },
    'keys-rounds': { type: 'string', default: '1' },
    'keys-warmup': { type: 'string', default: '1' },
    'keys-only': { type: 'boolean', default: false },
    'verify-rows': { type: 'string' },
    'verify-rounds': { type: 'string', default: '1' },
    'verify-only': { type: 'boolean', default: false },
    'adaptive-only': { type: 'boolean', default: false },
    'foreground-only': { type: 'boolean', default: false },
    // The throughput rounds alone (plain, exactly-once, engine, defaults, workers), none of the sections after them.
    'lanes-only': { type: 'boolean', default: false },
  },
});
const ROWS = Number(flags.rows);
const BATCH = Number(flags['batch-size']);
const PAIRS = Number(flags.pairs);
const WARMUP = Number(flags.warmup);
const ADAPTIVE_ROWS = Number(flags['adaptive-rows']);
const LANES = flags.lanes
  .split(',')
  .map(Number)
  .filter((n) => n > 1);
const log = (text: string) => {
  if (!flags.json) process.stderr.write(`${text}\n`);
};

const NEXT_END = `SELECT coalesce((SELECT id FROM bench_items WHERE id >= $1 AND id <= $2 ORDER BY id LIMIT 1 OFFSET $3), $2) AS end_id`;
const UPDATE = 'UPDATE bench_items SET hits = hits + 1 WHERE id BETWEEN $1 AND $2';

/** The baseline: what a team writes by hand without an engine. */
async function plainLoop(pool: pg.Pool): Promise<number> {
  const client = await pool.connect();
  try {
    const started = performance.now();
    const { rows } = await client.query<{ max: string }>('SELECT max(id) AS max FROM bench_items');
    const max = BigInt(rows[0]!.max);
    for (let start = 1n; start <= max;) {
      const next = await client.query<{ end_id: string }>(NEXT_END, [start, max, BATCH - 1]);
      const end = BigInt(next.rows[0]!.end_id);
      await client.query(UPDATE, [start, end]);
      start = end + 1n;
    }
    return performance.now() - started;
  } finally {
    client.release();
  }
}

const work: Work = {
  name: 'bench.hits',
  async do(job) {
    await job.query(UPDATE, [job.start, job.end]);
  },
};

const quiet = pino({ level: 'silent' });
/**
 * Drains a fresh migration over the table with `lanes` lanes and one worker of that concurrency,
 * without health holds (autovacuum on this table, rewritten over and over, would set it aside;
 * the foreground section measures them).
 */
const engine = (pool: pg.Pool, lanes: number): Promise<number> =>
  drain(pool, { work, batch: BATCH, lanes, health: false });

/** Runs `loop` on `connections` connections at once; the milliseconds until all have ended. */
async function timedOnConnections(
  pool: pg.Pool,
  connections: number,
  loop: (client: pg.PoolClient) => Promise<void>,
): Promise<number> {
  const started = performance.now();
  await Promise.all(
    Array.from({ length: connections }, async () => {
      const client = await pool.connect();
      try {
        await loop(client);
      } finally {
        client.release();
      }
    }),
  );
  return performance.now() - started;
}

/** The same UPDATEs over precomputed ranges, shared out to `connections` connections. */
function plainParallel(pool: pg.Pool, ranges: Array<[string, string]>, connections: number): Promise<number> {
  let next = 0;
  return timedOnConnections(pool, connections, async (client) => {
    for (let i = next++; i < ranges.length; i = next++) await client.query(UPDATE, ranges[i]);
  });
}

/**
 * The least an exactly-once job can cost, for `connections` connections: the same UPDATEs over
 * ranges written beforehand as rows (not timed: no cutting), each taken with `FOR UPDATE SKIP
 * LOCKED`, marked done in the transaction of its UPDATE, and committed in the round trip that
 * takes the next. What separates the engine from it is the engine's own cost; what separates it
 * from the plain loop is the cost of recording jobs at all.
 */
async function exactlyOnce(pool: pg.Pool, ranges: Array<[string, string]>, connections: number): Promise<number> {
  await pool.query('DROP TABLE IF EXISTS bench_ranges');
  await pool.query(
    'CREATE TABLE bench_ranges (id integer PRIMARY KEY, min_id bigint NOT NULL, max_id bigint NOT NULL, done boolean NOT NULL DEFAULT false)',
  );
  await pool.query('CREATE INDEX bench_ranges_waiting ON bench_ranges (id) WHERE NOT done');
  await pool.query(
    'INSERT INTO bench_ranges (id, min_id, max_id) SELECT i, s, e FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS t(s, e, i)',
    [ranges.map(([start]) => start), ranges.map(([, end]) => end)],
  );
  await pool.query('VACUUM ANALYZE bench_ranges');
  const take =
    'BEGIN; SELECT id, min_id, max_id FROM bench_ranges WHERE NOT done ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED';
  const taken = (results: unknown) =>
    (results as Array<{ rows: Array<{ id: number; min_id: string; max_id: string }> }>).at(-1)!.rows[0];
  return timedOnConnections(pool, connections, async (client) => {
    for (let range = taken(await client.query(take)); range;) {
      await client.query(UPDATE, [range.min_id, range.max_id]);
      range = taken(
        await client.query(`UPDATE bench_ranges SET done = true WHERE id = ${Number(range.id)}; COMMIT; ${take}`),
      );
    }
    await client.query('ROLLBACK');
  });
}

let statementsPass = 0;

/**
 * With --statements: the engine's own statements on N connections, without the engine. The same
 * ranges written as a migration's jobs, each lane chaining, as a runner does, bbm_take_next (or
 * bbm_take_job) and its savepoint, the work's UPDATE, then bbm_finish_job, COMMIT and the next take
 * in one round trip. The ranges are written as the engine keeps them cut, bbm_cut_depth waiting,
 * each batch with its cue, and more once half of them or fewer do (here a plain INSERT on another
 * connection, where the engine finds each range's end and sends the cut after a COMMIT): the take
 * costs more with all of them waiting. Between it and exactly-once lies the cost of the engine's SQL; between it
 * and the engine, the engine's JavaScript.
 */
async function engineStatements(pool: pg.Pool, ranges: Array<[string, string]>, connections: number): Promise<number> {
  statementsPass += 1;
  const { rows } = await pool.query<{ id: string }>(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name,
       max_parallel_jobs, status, min_value, max_value, started_at)
     VALUES ($1, $2, 'bench.hits', 'bench_items', 'id', $3, 4, $4, $5, now()) RETURNING id`,
    [`bench_statements_${statementsPass}`, BATCH, connections, ranges[0]![0], ranges.at(-1)![1]],
  );
  const id = rows[0]!.id;
  const { rows: depths } = await pool.query<{ depth: number }>('SELECT bbm_cut_depth($1, NULL) AS depth', [
    connections,
  ]);
  const depth = depths[0]!.depth;
  let cut = 0;
  let finished = 0;
  // The slice is claimed before the INSERT is sent, so that two lanes never write the same range.
  const cutUpTo = async (end: number) => {
    const next = ranges.slice(cut, end);
    cut += next.length;
    if (next.length === 0) return;
    await pool.query(
      `INSERT INTO batched_background_migration_jobs (batched_background_migration_id, min_value, max_value, status, attempts, batch_size, cut_cue)
       SELECT $1, s, e, 1, 0, $2, i = greatest(1, $5::int - bbm_cue_behind($6)) FROM unnest($3::bigint[], $4::bigint[]) WITH ORDINALITY AS t(s, e, i)`,
      [id, BATCH, next.map(([start]) => start), next.map(([, end]) => end), next.length, depth],
    );
  };
  await cutUpTo(depth);
  await pool.query('VACUUM ANALYZE batched_background_migration_jobs');
  const prologue = runPrologue({ names: ['bench.hits'], validNamePattern: '^[a-z]' }, 600_000);
  const taken = (results: unknown) => parseTake(takeRowsOf(results));
  const ms = await timedOnConnections(pool, connections, async (client) => {
    let take = taken(await client.query(prologue.any));
    for (;;) {
      if (take.kind !== 'job') {
        if (cut >= ranges.length) break;
        await client.query('ROLLBACK');
        await cutUpTo(cut + depth / 2);
        take = taken(await client.query(prologue.any));
        continue;
      }
      const started = performance.now();
      await client.query(UPDATE, [take.job.start, take.job.end]);
      finished += 1;
      if (cut - finished <= depth / 2) await cutUpTo(finished + depth);
      const job = claim(take.job, take.migration);
      const next = prologue.after({ migrationId: take.migration.id, lane: take.lane });
      const finish = `${finishJobText({ job, rows: BATCH, durationMs: performance.now() - started })}; COMMIT; ${next}`;
      take = taken(await client.query(finish));
      // bbm_take_next found no range of this lane: take from every migration.
      if (take.kind === 'nothing') take = taken(await client.query(`ROLLBACK; ${prologue.any}`));
    }
    await client.query('ROLLBACK');
  });
  await pool.query('UPDATE batched_background_migrations SET status = 3, finished_at = now() WHERE id = $1', [id]);
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
/** Each figure's median over a method's passes. */
const medianCpu = (passes: CpuPerJob[]): CpuPerJob => {
  const databases = passes.map((p) => p.databaseUs).filter((us): us is number => us !== null);
  return {
    busyUs: median(passes.map((p) => p.busyUs)),
    idleUs: median(passes.map((p) => p.idleUs)),
    databaseUs: databases.length === passes.length ? median(databases) : null,
    benchUs: median(passes.map((p) => p.benchUs)),
  };
};
const rate = (ms: number) => Math.round(ROWS / (ms / 1000));
const round3 = (x: number) => Math.round(x * 1000) / 1000;

/**
 * Starting at batch 100, toward 200 ms jobs: when the job time first lands within ±25 %, and how
 * many of the later jobs stay there. On a table of its own, larger than the others (4,000,000 rows
 * by default): on the 1,000,000-row table a 200 ms job holds about 50,000 rows, so only 7-9 jobs
 * followed convergence and one slow job moved the share by 14 points.
 */
async function adaptive(pool: pg.Pool): Promise<{
  targetMs: number;
  rows: number;
  convergedAtJob: number | null;
  withinShare: number;
  /** The share a fixed size at the median pace would have kept within ±25 % (the jobs' own noise). */
  ceilingShare: number;
  jobs: number;
}> {
  const targetMs = 200;
  await createItemsTable(pool, 'bench_adaptive_items', ADAPTIVE_ROWS);
  const adaptiveWork: Work = {
    name: 'bench.adaptive_hits',
    async do(job) {
      await job.query('UPDATE bench_adaptive_items SET hits = hits + 1 WHERE id BETWEEN $1 AND $2', [
        job.start,
        job.end,
      ]);
    },
  };
  await pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, target_job_ms)
     VALUES ('bench_adaptive', 100, $1, 'bench_adaptive_items', 'id', $2)`,
    [adaptiveWork.name, targetMs],
  );
  const durations: number[] = [];
  const sizes: number[] = [];
  const sized = { run: (r: RunResult) => r.outcome === 'job_succeeded' && r.job && sizes.push(r.job.batchSize) };
  await benchWorker(pool, { work: [adaptiveWork], health: false, jobDurationsMs: durations, observers: [sized] }).run({
    untilDone: true,
  });
  await pool.query('DROP TABLE bench_adaptive_items');
  // The last range holds what is left over, whatever the size: it says nothing about the servo.
  const measured = durations.slice(0, -1);
  const within = (ms: number) => Math.abs(ms - targetMs) <= 0.25 * targetMs;
  const first = measured.findIndex(within);
  const after = first < 0 ? [] : measured.slice(first + 1);
  // What the machine's own noise allows: the share within ±25 % had every job after convergence
  // been cut at the one size that makes the median job's time per row take the target.
  const perRow = after.map((ms, i) => ms / sizes[first + 1 + i]!);
  const median = [...perRow].sort((a, b) => a - b)[Math.floor(perRow.length / 2)] ?? 0;
  const steady = perRow.filter((x) => Math.abs(x / median - 1) <= 0.25).length;
  return {
    targetMs,
    rows: ADAPTIVE_ROWS,
    convergedAtJob: first < 0 ? null : first + 1,
    withinShare: after.length === 0 ? 0 : round3(after.filter(within).length / after.length),
    ceilingShare: after.length === 0 ? 0 : round3(steady / after.length),
    jobs: durations.length,
  };
}

function adaptiveReport(a: Awaited<ReturnType<typeof adaptive>>): void {
  log(
    `adaptive: from batch 100 toward ${a.targetMs} ms jobs over ${a.rows.toLocaleString('en')} rows: within ±25 % at job ${a.convergedAtJob ?? 'never'}, then ${Math.round(a.withinShare * 100)} % of jobs stayed (${a.jobs} jobs; ` +
      `one fixed size at the median pace would have kept ${Math.round(a.ceilingShare * 100)} %: the jobs' own noise)`,
  );
}

function foregroundReport(f: ForegroundResult): void {
  const share = (rowsPerSec: number) => `${Math.round((rowsPerSec / f.unthrottledRowsPerSec) * 100)} % of unthrottled`;
  const times = (ms: number) => `${Math.round((ms / f.baselineP99Ms) * 100) / 100}×`;
  log(
    `foreground: ${f.rate} single-row updates/s on the same table; p99 ${f.baselineP99Ms} ms alone, ` +
      `${f.unthrottledP99Ms} ms beside ${f.lanes} lanes with health holds off (${f.unthrottledRowsPerSec.toLocaleString('en')} rows/s), ` +
      `${f.heldP99Ms} ms with them on (${f.heldRowsPerSec.toLocaleString('en')} rows/s)`,
  );
  log(
    `foreground with holds and commitLatencyFactor ${f.commitLatencyFactor}: p99 ${f.guardedP99Ms} ms (${f.guardedRowsPerSec.toLocaleString('en')} rows/s)`,
  );
  log(
    `foreground beside 1 lane: ${f.curve.map((c) => `batch ${c.batchSize}: p99 ${c.p99Ms} ms at ${c.rowsPerSec.toLocaleString('en')} rows/s`).join('; ')}`,
  );
  log(
    `foreground protection: p99 ${times(f.guardedP99Ms)} baseline at ${share(f.guardedRowsPerSec)}; ` +
      `1 lane at batch ${f.curve.at(-1)?.batchSize}: ${times(f.curve.at(-1)?.p99Ms ?? NaN)} at ${share(f.curve.at(-1)?.rowsPerSec ?? NaN)}`,
  );
}

/** A fresh table of `rows` rows (ids 1..rows) in the shape every method updates, vacuumed and analyzed. */
async function createItemsTable(pool: pg.Pool, table: 'bench_items' | 'bench_adaptive_items', rows: number) {
  await pool.query(`DROP TABLE IF EXISTS ${table}`);
  await pool.query(`CREATE TABLE ${table} (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0, payload text)`);
  await pool.query(`INSERT INTO ${table} (id, payload) SELECT i, md5(i::text) FROM generate_series(1, $1::int) i`, [
    rows,
  ]);
  await pool.query(`VACUUM ANALYZE ${table}`);
}

/**
 * Every pass starts from the table as a vacuum leaves it, and none is charged a vacuum: a pass
 * leaves 1,000,000 dead row versions, which autovacuum (off on bench_items during the rounds)
 * would clean up in whichever pass it happened to run, costing that pass about a fifth of its CPU
 * (README, Performance). Not timed.
 */
async function vacuumItems(pool: pg.Pool): Promise<void> {
  await pool.query('VACUUM bench_items');
}

/**
 * Transactions (commits and rollbacks, from pg_stat_database) per job of a 1-lane migration
 * drained by `count` workers: each job is two (its own and the cut of the next range); what
 * more workers add is the cost of the locked-out ones.
 */
let busyPass = 0;

async function transactionsPerJob(pool: pg.Pool, url: string, count: number): Promise<number> {
  const transactions = async () =>
    Number(
      (
        await pool.query(
          'SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = current_database()',
        )
      ).rows[0].n,
    );
  busyPass += 1;
  await pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name)
     VALUES ($1, $2, 'bench.hits', 'bench_items', 'id')`,
    [`bench_busy_${busyPass}`, BATCH],
  );
  const before = await transactions();
  // Each worker has its own pool, ended by close(): a backend flushes its statistics when it exits.
  const workers = Array.from(
    { length: count },
    () =>
      new Worker({
        connectionString: url,
        work: [work],
        logger: quiet,
        startupJitterMs: 0,
        intervalMs: 50,
        maxIntervalMs: 2_000,
        health: false,
      }),
  );
  await Promise.all(workers.map((w) => w.run({ untilDone: true })));
  await Promise.all(workers.map((w) => w.close()));
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  return round3(((await transactions()) - before) / Math.ceil(ROWS / BATCH));
}

async function main() {
  const { url, stop: stopDatabase } = await databaseFromEnv();
  const maxLanes = Math.max(1, ...LANES);
  // Lanes, the worker's own connection, and the foreground client of the foreground section.
  const pool = createPool({ connectionString: url, max: Math.max(maxLanes, 4) + 3 });
  try {
    await migrateSchema(pool);
    const keysOptions = {
      rows: flags['keys-rows'] === undefined ? ROWS : Number(flags['keys-rows']),
      batch: BATCH,
      rounds: Number(flags['keys-rounds']),
      warmup: Number(flags['keys-warmup']),
      lanes: 4,
      log,
    };
    const verifyOptions = {
      rows: flags['verify-rows'] === undefined ? ROWS : Number(flags['verify-rows']),
      batch: BATCH,
      lanes: 1,
      rounds: Number(flags['verify-rounds']),
    };
    if (flags['verify-only']) {
      const result = { verify: await verifyBench(pool, verifyOptions, log) };
      if (flags.json) process.stdout.write(`${JSON.stringify(result)}\n`);
      else verifyReport(result.verify, log);
      return;
    }
    if (flags['adaptive-only']) {
      const result = { adaptive: await adaptive(pool) };
      if (flags.json) process.stdout.write(`${JSON.stringify(result)}\n`);
      else adaptiveReport(result.adaptive);
      return;
    }
    if (flags['foreground-only']) {
      await createItemsTable(pool, 'bench_items', ROWS);
      // A fresh table gets faster over its first rewrites (../shared/README.md): warm it up as the rounds would.
      for (let i = 0; i < WARMUP; i += 1) {
        await vacuumItems(pool);
        await engine(pool, 4);
      }
      const started = performance.now();
      // The protected phase's controllers' decisions (commit-probes.ts, latency-lanes.ts log each change), with the time into the run.
      const decisions = pino(
        { level: 'debug', base: null, timestamp: false },
        {
          write(line: string) {
            const { msg } = JSON.parse(line) as { msg: string };
            if (/^(commit )?latency/.test(msg)) log(`  ${Math.round(performance.now() - started)} ms ${msg}`);
          },
        },
      );
      const result = {
        foreground: await foreground(pool, {
          url,
          rows: ROWS,
          batch: BATCH,
          work,
          curveBatchSizes: [BATCH],
          guardedLogger: decisions,
        }),
      };
      if (flags.json) process.stdout.write(`${JSON.stringify(result)}\n`);
      else foregroundReport(result.foreground);
      return;
    }
    if (flags['keys-only']) {
      const result = { rows: keysOptions.rows, batchSize: BATCH, keys: await keys(pool, keysOptions) };
      if (flags.json) process.stdout.write(`${JSON.stringify(result)}\n`);
      else keysReport(result.keys, log);
      return;
    }
    await createItemsTable(pool, 'bench_items', ROWS);
    const ranges: Array<[string, string]> = [];
    for (let start = 1; start <= ROWS; start += BATCH)
      ranges.push([String(start), String(Math.min(ROWS, start + BATCH - 1))]);

    // Off for the rounds (vacuumItems vacuums before each pass), on again for the sections after them.
    await pool.query('ALTER TABLE bench_items SET (autovacuum_enabled = false)');
    const methods: Array<{ name: string; run: () => Promise<number> }> = [
      { name: 'plain 1', run: () => plainLoop(pool) },
      { name: 'engine 1', run: () => engine(pool, 1) },
      ...LANES.flatMap((n) => [
        { name: `plain ${n}`, run: () => plainParallel(pool, ranges, n) },
        { name: `exactly-once ${n}`, run: () => exactlyOnce(pool, ranges, n) },
        ...(flags.statements ? [{ name: `statements ${n}`, run: () => engineStatements(pool, ranges, n) }] : []),
        { name: `engine ${n}`, run: () => engine(pool, n) },
      ]),
      // What a user runs: the defaults (health holds and the lane controllers on), in one worker
      // and in as many one-lane workers as lanes (each its own pool, like `bbm run` processes).
      {
        name: `defaults ${maxLanes}`,
        run: () => drain(pool, { work, batch: BATCH, lanes: maxLanes, health: undefined }),
      },
      {
        name: `workers ${maxLanes}x1`,
        run: () => drain(pool, { work, batch: BATCH, lanes: maxLanes, health: undefined, separate: { url } }),
      },
    ];
    log(
      `${ROWS.toLocaleString('en')} rows, batches of ${BATCH}; ${WARMUP} warm-up rounds, then ${2 * PAIRS} measured rounds of: ${methods.map((m) => m.name).join(', ')}`,
    );
    for (let i = 0; i < WARMUP; i += 1) {
      for (const method of methods) {
        await vacuumItems(pool);
        await method.run();
      }
      log(`  warm-up ${i + 1} done`);
    }
    const times = new Map<string, number[]>(methods.map((m) => [m.name, []]));
    const meter = flags.cpu ? await cpuMeter(pool) : null;
    if (flags.cpu && !meter) log('--cpu: no /proc here, CPU not measured');
    const cpuPasses = new Map<string, CpuPerJob[]>(methods.map((m) => [m.name, []]));
    for (let round = 0; round < 2 * PAIRS; round += 1) {
      // Rotate the order every round and reverse it every other one, so no method always follows the same one.
      const rotated = methods.map((_, i) => methods[(i + round) % methods.length]!);
      const order = round % 2 === 0 ? rotated : rotated.reverse();
      for (const method of order) {
        await vacuumItems(pool);
        const before = meter?.();
        times.get(method.name)!.push(await method.run());
        if (meter && before) cpuPasses.get(method.name)!.push(perJob(before, meter(), ranges.length));
      }
      log(
        `  round ${round + 1}: ${methods.map((m) => `${m.name} ${rate(times.get(m.name)!.at(-1)!).toLocaleString('en')}`).join(', ')} rows/s`,
      );
    }
    // The sections below run as a production table would: autovacuum on (the foreground's holds see it).
    await pool.query('ALTER TABLE bench_items RESET (autovacuum_enabled)');
    // Rates are rows over time, so a round's engine/plain ratio is plain time over engine time.
    const ratioOf = (engineName: string, plainName: string) =>
      round3(median(times.get(plainName)!.map((plainMs, i) => plainMs / times.get(engineName)![i]!)));
    const result = {
      rows: ROWS,
      batchSize: BATCH,
      rawRowsPerSec: rate(median(times.get('plain 1')!)),
      engineRowsPerSec: rate(median(times.get('engine 1')!)),
      ratio: ratioOf('engine 1', 'plain 1'),
      lanes: LANES.map((n) => ({
        lanes: n,
        engineRowsPerSec: rate(median(times.get(`engine ${n}`)!)),
        rawRowsPerSec: rate(median(times.get(`plain ${n}`)!)),
        ratio: ratioOf(`engine ${n}`, `plain ${n}`),
        speedup: ratioOf(`engine ${n}`, 'engine 1'),
        exactlyOnceRowsPerSec: rate(median(times.get(`exactly-once ${n}`)!)),
        exactlyOnceRatio: ratioOf(`exactly-once ${n}`, `plain ${n}`),
        ratioToExactlyOnce: ratioOf(`engine ${n}`, `exactly-once ${n}`),
        ...(flags.statements && {
          statementsRowsPerSec: rate(median(times.get(`statements ${n}`)!)),
          statementsToExactlyOnce: ratioOf(`statements ${n}`, `exactly-once ${n}`),
          ratioToStatements: ratioOf(`engine ${n}`, `statements ${n}`),
        }),
      })),
      defaults: {
        lanes: maxLanes,
        rowsPerSec: rate(median(times.get(`defaults ${maxLanes}`)!)),
        ratioToHealthOff: ratioOf(`defaults ${maxLanes}`, `engine ${maxLanes}`),
        workersRowsPerSec: rate(median(times.get(`workers ${maxLanes}x1`)!)),
        workersRatioToPlain: ratioOf(`workers ${maxLanes}x1`, `plain ${maxLanes}`),
        workersRatioToOneWorker: ratioOf(`workers ${maxLanes}x1`, `defaults ${maxLanes}`),
      },
      ...(meter && { cpu: Object.fromEntries([...cpuPasses].map(([name, passes]) => [name, medianCpu(passes)])) }),
      ...(!flags['lanes-only'] && {
        sections: {
          adaptive: await adaptive(pool),
          busy: {
            workers: 4,
            lanes: 1,
            transactionsPerJob: await transactionsPerJob(pool, url, 4),
            oneWorkerTransactionsPerJob: await transactionsPerJob(pool, url, 1),
          },
          foreground: await foreground(pool, { url, rows: ROWS, batch: BATCH, work }),
          keys: await keys(pool, keysOptions),
          verify: await verifyBench(pool, verifyOptions, log),
        },
      }),
    };
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(result)}\n`);
      return;
    }
    log('');
    log(`method        rows/s (median)   ratio`);
    log(`plain 1       ${String(result.rawRowsPerSec.toLocaleString('en')).padStart(15)}`);
    log(
      `engine 1      ${String(result.engineRowsPerSec.toLocaleString('en')).padStart(15)}   ${result.ratio} of plain 1`,
    );
    for (const lane of result.lanes) {
      log(`plain ${lane.lanes}       ${String(lane.rawRowsPerSec.toLocaleString('en')).padStart(15)}`);
      log(
        `exactly-once ${lane.lanes} ${String(lane.exactlyOnceRowsPerSec.toLocaleString('en')).padStart(14)}   ${lane.exactlyOnceRatio} of plain ${lane.lanes}`,
      );
      if (lane.statementsRowsPerSec !== undefined) {
        log(
          `statements ${lane.lanes} ${String(lane.statementsRowsPerSec.toLocaleString('en')).padStart(16)}   ${lane.statementsToExactlyOnce} of exactly-once ${lane.lanes}`,
        );
      }
      log(
        `engine ${lane.lanes}      ${String(lane.engineRowsPerSec.toLocaleString('en')).padStart(15)}   ${lane.ratio} of plain ${lane.lanes}, ${lane.ratioToExactlyOnce} of exactly-once ${lane.lanes}, ${lane.speedup}× engine 1` +
          (lane.ratioToStatements === undefined ? '' : `, ${lane.ratioToStatements} of statements ${lane.lanes}`),
      );
    }
    const d = result.defaults;
    log(
      `defaults ${d.lanes}    ${String(d.rowsPerSec.toLocaleString('en')).padStart(15)}   ${d.ratioToHealthOff} of engine ${d.lanes} (health holds off)`,
    );
    log(
      `workers ${d.lanes}x1   ${String(d.workersRowsPerSec.toLocaleString('en')).padStart(15)}   ${d.workersRatioToPlain} of plain ${d.lanes}, ${d.workersRatioToOneWorker} of defaults ${d.lanes} (one worker)`,
    );
    if (result.cpu) {
      log('');
      log('CPU per job, µs (median pass): all cores busy, idle; the database server; this process');
      for (const [name, c] of Object.entries(result.cpu)) {
        log(
          `${name.padEnd(16)} busy ${String(c.busyUs).padStart(5)}  idle ${String(c.idleUs).padStart(5)}  database ${String(c.databaseUs ?? '?').padStart(5)}  bench ${String(c.benchUs).padStart(4)}`,
        );
      }
    }
    const sections = result.sections;
    if (sections) {
      adaptiveReport(sections.adaptive);
      log(
        `busy: ${sections.busy.workers} workers on a 1-lane migration: ${sections.busy.transactionsPerJob} transactions per job ` +
          `(one worker alone: ${sections.busy.oneWorkerTransactionsPerJob})`,
      );
      foregroundReport(sections.foreground);
      keysReport(sections.keys, log);
      verifyReport(sections.verify, log);
    }
  } finally {
    await pool.end();
    await stopDatabase();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
