/**
 * `npm run soak -- --minutes N`: four workers (two lanes each) drain migration after migration
 * for N minutes against one database, and every minute the script prints rows/s, this process's
 * RSS (the workers run in it), the workers' open connections and the jobs table's size. Every
 * migration adds one to every row of the table, so after K migrations every row must hold K:
 * that is checked after each one. At the end it says whether RSS and connections stayed flat
 * (under 10 % growth after the first minute) and whether every row was done exactly once.
 *
 *   npm run soak -- [--minutes N] [--rows N] [--batch-size N] [--json]
 */
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { Worker } from '../src/bbm/worker.ts';
import type { Work } from '../src/bbm/types.ts';
import { createPool } from '../src/store/db.ts';
import { databaseFromEnv } from '../src/dev/embedded-postgres.ts';
import { migrateSchema } from '../src/store/apply-schema.ts';

const { values: flags } = parseArgs({
  options: {
    minutes: { type: 'string', default: '5' },
    rows: { type: 'string', default: '200000' },
    'batch-size': { type: 'string', default: '1000' },
    json: { type: 'boolean', default: false },
  },
});
const MINUTES = Number(flags.minutes);
const ROWS = Number(flags.rows);
const BATCH = Number(flags['batch-size']);
const say = (text: string) => process.stderr.write(`${text}\n`);

const work: Work = {
  name: 'soak.hits',
  async do(job) {
    const result = await job.query(`UPDATE ${job.table} SET hits = hits + 1 WHERE ${job.column} BETWEEN $1 AND $2`, [
      job.start,
      job.end,
    ]);
    return result.rowCount ?? undefined;
  },
};

interface Sample {
  minute: number;
  rowsPerSec: number;
  rssMb: number;
  connections: number;
  jobsTableMb: number;
  migrations: number;
}

async function main(): Promise<void> {
  const { url, stop: stopDatabase } = await databaseFromEnv();
  // Its own application name, so that the connections counted are the workers' alone.
  const pool = createPool({ connectionString: url, max: 2, applicationName: 'pg-bbm-soak' });
  const workers = Array.from(
    { length: 4 },
    () =>
      new Worker({
        connectionString: url,
        work: [work],
        logger: pino({ level: 'silent' }),
        concurrency: 2,
        intervalMs: 100,
        maxIntervalMs: 1_000,
      }),
  );
  try {
    await migrateSchema(pool);
    await pool.query('DROP TABLE IF EXISTS soak_items');
    await pool.query('CREATE TABLE soak_items (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0, payload text)');
    await pool.query('INSERT INTO soak_items (id, payload) SELECT i, md5(i::text) FROM generate_series(1, $1::int) i', [
      ROWS,
    ]);
    await pool.query('VACUUM ANALYZE soak_items');
    const running = workers.map((w) => w.run());
    say(
      `soak: ${MINUTES} min, 4 workers × 2 lanes, ${ROWS.toLocaleString('en')} rows a migration in batches of ${BATCH}`,
    );

    const started = performance.now();
    const deadline = started + MINUTES * 60_000;
    const samples: Sample[] = [];
    let migrations = 0;
    let rowsThisMinute = 0;
    let minuteStarted = started;
    let wrong: string | undefined;
    while (performance.now() < deadline && !wrong) {
      migrations += 1;
      await pool.query(
        `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
         VALUES ($1, $2, 'soak.hits', 'soak_items', 'id', 2)`,
        [`soak_${migrations}`, BATCH],
      );
      for (;;) {
        const { rows } = await pool.query<{ status: number }>(
          'SELECT status FROM batched_background_migrations WHERE name = $1',
          [`soak_${migrations}`],
        );
        if (rows[0]?.status === 2) break;
        if (rows[0]?.status === 3) {
          wrong = `migration soak_${migrations} failed`;
          break;
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const check = await pool.query<{ lo: number; hi: number }>(
        'SELECT min(hits) AS lo, max(hits) AS hi FROM soak_items',
      );
      if (check.rows[0]?.lo !== migrations || check.rows[0]?.hi !== migrations) {
        wrong ??= `after ${migrations} migrations rows hold ${check.rows[0]?.lo}..${check.rows[0]?.hi}`;
      }
      rowsThisMinute += ROWS;
      const now = performance.now();
      if (now - minuteStarted >= 60_000 || now >= deadline) {
        const { rows } = await pool.query<{ connections: number; jobs_bytes: string }>(
          `SELECT (SELECT count(*)::int FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pg-bbm') AS connections,
                  pg_total_relation_size('batched_background_migration_jobs') AS jobs_bytes`,
        );
        const sample: Sample = {
          minute: samples.length + 1,
          rowsPerSec: Math.round(rowsThisMinute / ((now - minuteStarted) / 1000)),
          rssMb: Math.round(process.memoryUsage().rss / 2 ** 20),
          connections: rows[0]!.connections,
          jobsTableMb: Math.round(Number(rows[0]!.jobs_bytes) / 2 ** 20),
          migrations,
        };
        samples.push(sample);
        say(
          `  minute ${sample.minute}: ${sample.rowsPerSec.toLocaleString('en')} rows/s, RSS ${sample.rssMb} MB, ` +
            `${sample.connections} connections, jobs table ${sample.jobsTableMb} MB, ${migrations} migrations done`,
        );
        rowsThisMinute = 0;
        minuteStarted = now;
      }
    }
    await Promise.all(workers.map((w) => w.stop()));
    await Promise.all(running);

    const base = samples[0];
    const last = samples.at(-1);
    const growth = (a: number, b: number) => (a === 0 ? 0 : (b - a) / a);
    const rssGrowth = base && last ? growth(base.rssMb, last.rssMb) : 0;
    const connectionGrowth = base && last ? growth(base.connections, last.connections) : 0;
    const result = {
      minutes: MINUTES,
      migrations,
      samples,
      rssGrowth: Math.round(rssGrowth * 1000) / 1000,
      connectionGrowth: Math.round(connectionGrowth * 1000) / 1000,
      flat: rssGrowth < 0.1 && connectionGrowth < 0.1,
      exactlyOnce: wrong === undefined,
      ...(wrong && { wrong }),
    };
    say(
      `soak: ${migrations} migrations; RSS ${base?.rssMb}→${last?.rssMb} MB (${Math.round(rssGrowth * 100)} %), ` +
        `connections ${base?.connections}→${last?.connections}: ${result.flat ? 'flat' : 'NOT flat'}; ` +
        `${result.exactlyOnce ? 'every row done exactly once by every migration' : `NOT exactly once: ${wrong}`}`,
    );
    if (flags.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    if (!result.flat || !result.exactlyOnce) process.exitCode = 1;
  } finally {
    await Promise.all(workers.map((w) => w.close()));
    await pool.end();
    await stopDatabase();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`soak failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
