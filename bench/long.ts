/**
 * `npm run bench:long`: does the pace sag over a long migration (issue 30)? One worker with the
 * defaults (health holds and the latency controller on, `concurrency` lanes, as `bbm run
 * --concurrency 2` runs it) drains a migration of `rows` rows in jobs of `batch` rows, and the
 * script prints jobs per second in each tenth of the drain, the last tenth over the first, the
 * jobs table's size at the end, the lanes in the work on average, every change the controllers
 * made to the lanes, with its reason and when, and every health hold set, with when a job next
 * ended. A plain single-connection keyset loop over a table of the same shape, in batches of the
 * same size, is timed per tenth too (--plain), as the flat line to compare with.
 *
 *   npm run bench:long -- [--rows N] [--batch-size N] [--concurrency N] [--plain] [--health-off] [--json]
 */
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { pino } from 'pino';
import { benchWorker } from './drain.ts';
import type { HealthOptions, LanesEvent, RunResult, Work } from '../src/bbm/types.ts';
import { createPool } from '../src/store/db.ts';
import { databaseFromEnv } from '../src/dev/embedded-postgres.ts';
import { migrateSchema } from '../src/store/apply-schema.ts';

const { values: flags } = parseArgs({
  options: {
    rows: { type: 'string', default: '10000000' },
    'batch-size': { type: 'string', default: '100' },
    concurrency: { type: 'string', default: '2' },
    plain: { type: 'boolean', default: false },
    'health-off': { type: 'boolean', default: false },
    // Health options as JSON, e.g. '{"commitLatencyFactor":null}', to find which controller costs what.
    health: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const ROWS = Number(flags.rows);
const BATCH = Number(flags['batch-size']);
const CONCURRENCY = Number(flags.concurrency);
const say = (text: string) => process.stderr.write(`${text}\n`);
const round2 = (x: number) => Math.round(x * 100) / 100;

/** Lanes in the work right now, and the time integral of it: the drain's mean lanes in work. */
const inWork = { now: 0, since: 0, laneMs: 0 };
function countInWork(delta: number): void {
  const at = performance.now();
  if (inWork.since > 0) inWork.laneMs += inWork.now * (at - inWork.since);
  inWork.since = at;
  inWork.now += delta;
}

const work: Work = {
  name: 'long.hits',
  async do(job) {
    countInWork(1);
    try {
      const result = await job.query(`UPDATE ${job.table} SET hits = hits + 1 WHERE ${job.column} BETWEEN $1 AND $2`, [
        job.start,
        job.end,
      ]);
      return result.rowCount ?? undefined;
    } finally {
      countInWork(-1);
    }
  },
};

async function createTable(pool: pg.Pool, table: string): Promise<void> {
  await pool.query(`DROP TABLE IF EXISTS ${table}`);
  await pool.query(`CREATE TABLE ${table} (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0, payload text)`);
  await pool.query(`INSERT INTO ${table} (id, payload) SELECT i, md5(i::text) FROM generate_series(1, $1::int) i`, [
    ROWS,
  ]);
  await pool.query(`VACUUM ANALYZE ${table}`);
}

/** Batches per second in each tenth of a drain whose batches ended at `ends` (ms, in order). */
function tenths(ends: number[], startedAt: number): number[] {
  const rates: number[] = [];
  const per = Math.floor(ends.length / 10);
  let from = startedAt;
  for (let tenth = 0; tenth < 10; tenth += 1) {
    const last = tenth === 9 ? ends.length - 1 : (tenth + 1) * per - 1;
    const count = last - tenth * per + 1;
    const to = ends[last]!;
    rates.push(Math.round(count / ((to - from) / 1000)));
    from = to;
  }
  return rates;
}

async function plainLoop(pool: pg.Pool): Promise<number[]> {
  await createTable(pool, 'long_plain');
  const client = await pool.connect();
  const ends: number[] = [];
  const startedAt = performance.now();
  try {
    for (let start = 1; start <= ROWS; start += BATCH) {
      await client.query('UPDATE long_plain SET hits = hits + 1 WHERE id BETWEEN $1 AND $2', [
        start,
        Math.min(ROWS, start + BATCH - 1),
      ]);
      ends.push(performance.now());
    }
  } finally {
    client.release();
  }
  await pool.query('DROP TABLE long_plain');
  return tenths(ends, startedAt);
}

async function main(): Promise<void> {
  const { url, stop: stopDatabase } = await databaseFromEnv();
  const pool = createPool({ connectionString: url, max: CONCURRENCY + 3 });
  try {
    await migrateSchema(pool);
    const plain = flags.plain ? await plainLoop(pool) : null;
    await createTable(pool, 'long_items');
    await pool.query(
      `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
       VALUES ('long', $1, $2, 'long_items', 'id', $3)`,
      [BATCH, work.name, CONCURRENCY],
    );
    const ends: number[] = [];
    const lanes: Array<LanesEvent & { atSec: number }> = [];
    /** Health holds set, with when the first job after each ended (the hold's cost, about). */
    const holds: Array<{ atSec: number; reason: string; at: number; resumedAfterSec?: number }> = [];
    let startedAt = performance.now();
    const worker = benchWorker(pool, {
      work: [work],
      lanes: CONCURRENCY,
      health: flags['health-off']
        ? false
        : flags.health === undefined
          ? undefined
          : (JSON.parse(flags.health) as HealthOptions),
      deployed: true,
      logger: pino({ level: process.env.LONG_LOG ?? 'silent' }),
      observers: [
        {
          run: (result: RunResult) => {
            if (result.outcome === 'migration_started') startedAt = performance.now();
            if (result.outcome === 'job_succeeded') ends.push(performance.now());
          },
          lanes: (event) => lanes.push({ ...event, atSec: round2((performance.now() - startedAt) / 1000) }),
          hold: (event) =>
            holds.push({
              reason: event.reason,
              at: performance.now(),
              atSec: round2((performance.now() - startedAt) / 1000),
            }),
        },
      ],
    });
    say(`draining ${ROWS.toLocaleString('en')} rows in jobs of ${BATCH} in ${CONCURRENCY} lanes, with the defaults…`);
    await worker.run({ untilDone: true });
    await worker.close();
    const { rows } = await pool.query<{ mb: string }>(
      `SELECT round(pg_total_relation_size('batched_background_migration_jobs') / 1048576.0, 1)::text AS mb`,
    );
    const rates = tenths(ends, startedAt);
    const result = {
      rows: ROWS,
      batch: BATCH,
      concurrency: CONCURRENCY,
      jobs: ends.length,
      seconds: round2((ends.at(-1)! - startedAt) / 1000),
      jobsPerSecByTenth: rates,
      lastOverFirst: round2(rates[9]! / rates[0]!),
      plainBatchesPerSecByTenth: plain,
      plainLastOverFirst: plain && round2(plain[9]! / plain[0]!),
      jobsTableMb: Number(rows[0]!.mb),
      // Time in the work over the drain's time: how many lanes ran work on average.
      meanLanesInWork: round2(inWork.laneMs / (ends.at(-1)! - startedAt)),
      laneChanges: lanes,
      holds: holds.map(({ atSec, reason, at }) => {
        const next = ends.find((end) => end > at);
        return { atSec, reason, ...(next !== undefined && { resumedAfterSec: round2((next - at) / 1000) }) };
      }),
    };
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(result)}\n`);
    } else {
      say(
        `jobs/s by tenth: ${rates.join(' ')}; last tenth ${result.lastOverFirst}× the first (${result.jobs} jobs, ${result.seconds} s)`,
      );
      if (plain) say(`plain loop batches/s by tenth: ${plain.join(' ')}; last ${result.plainLastOverFirst}× the first`);
      say(`jobs table at the end: ${result.jobsTableMb} MB; lanes in the work on average: ${result.meanLanesInWork}`);
      for (const change of lanes)
        say(`  ${change.atSec} s: ${change.migration} lanes ${change.direction} ${change.from} → ${change.to}`);
      for (const hold of result.holds)
        say(`  ${hold.atSec} s: held (${hold.reason}); a job ended ${hold.resumedAfterSec ?? '?'} s later`);
    }
  } finally {
    await pool.end();
    await stopDatabase();
  }
}

main().catch((error: unknown) => {
  say(`bench:long failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exitCode = 1;
});
