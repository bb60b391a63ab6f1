/**
 * `npm start`: pg-bbm end to end on a real PostgreSQL. Starts an embedded server (or uses
 * DATABASE_URL, in a scratch database it drops afterwards), creates a 200,000-row table,
 * enqueues a backfill with a plain SQL INSERT, and drains it with two workers sharing the
 * migration's two lanes, drawing progress as it goes.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { pino } from 'pino';
import { migrationReports } from '../src/bbm/status.ts';
import type { RunResult } from '../src/bbm/types.ts';
import { Worker } from '../src/bbm/worker.ts';
import { createPool, maskConnectionString } from '../src/store/db.ts';
import { startEmbeddedPostgres, type EmbeddedCluster } from '../src/dev/embedded-postgres.ts';
import { migrateSchema } from '../src/store/apply-schema.ts';
import { copyColumn } from '../src/work/copy-column.ts';
import { progressBar } from '../src/cli/format.ts';

const ROWS = 200_000;
const BATCH_SIZE = 5_000;
const WORKERS = 2;
const say = (text: string) => process.stdout.write(`${text}\n`);

const LANES = 2;
const ENQUEUE_SQL = `INSERT INTO batched_background_migrations
  (name, min_value, max_value, batch_size, status, job_signature_name, table_name, column_name, max_parallel_jobs)
VALUES ('backfill_price_cents_big', 1, NULL, ${BATCH_SIZE}, 1, 'demo.copy_price', 'public.items', 'id', ${LANES});`;

async function scratchDatabase(): Promise<{ url: string; cleanup: () => Promise<void> }> {
  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) {
    say('starting an embedded PostgreSQL (set DATABASE_URL to use your own server)…');
    const cluster: EmbeddedCluster = await startEmbeddedPostgres();
    say(`  listening on 127.0.0.1:${cluster.port}`);
    return { url: cluster.connectionString('postgres'), cleanup: () => cluster.stop() };
  }
  const name = `bbm_demo_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client(serverUrl);
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  say(`using ${maskConnectionString(url.toString())} (a scratch database, dropped at the end)`);
  return {
    url: url.toString(),
    cleanup: async () => {
      const client = new pg.Client(serverUrl);
      await client.connect();
      await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await client.end();
    },
  };
}

async function main(): Promise<void> {
  const started = Date.now();
  const { url, cleanup } = await scratchDatabase();
  const pool = createPool({ connectionString: url, max: 4 });
  const workers: Worker[] = [];
  try {
    say('applying the pg-bbm schema (drizzle migrations)…');
    await migrateSchema(pool);

    say(`creating items with ${ROWS.toLocaleString('en')} rows, some ids missing…`);
    await pool.query(
      'CREATE TABLE items (id bigint PRIMARY KEY, price_cents integer NOT NULL, price_cents_big bigint)',
    );
    // Every 97th id is missing: ranges are found through the index, holes and all.
    await pool.query(
      `INSERT INTO items (id, price_cents) SELECT i + i / 97, (i * 37) % 100000 FROM generate_series(1, $1::int) i`,
      [ROWS],
    );
    await pool.query('ANALYZE items');

    say(
      `enqueueing a backfill of price_cents_big, in batches of ${BATCH_SIZE.toLocaleString('en')}, ${LANES} lanes:\n\n${ENQUEUE_SQL}\n`,
    );
    await pool.query(ENQUEUE_SQL);

    const work = [copyColumn({ name: 'demo.copy_price', from: 'price_cents', to: 'price_cents_big' })];
    const jobsBy = new Map<number, number>();
    const lockedOut = new Map<number, number>();
    const logger = pino({ level: process.env.BBM_LOG_LEVEL ?? 'warn' });
    for (let n = 1; n <= WORKERS; n += 1) {
      const count = (result: RunResult) => {
        if (result.outcome === 'job_succeeded') jobsBy.set(n, (jobsBy.get(n) ?? 0) + 1);
        if (result.outcome === 'lock_in_use') lockedOut.set(n, (lockedOut.get(n) ?? 0) + 1);
      };
      workers.push(
        new Worker({
          connectionString: url,
          work,
          logger: logger.child({ worker: n }),
          intervalMs: 200,
          startupJitterMs: 50,
          observers: [{ run: count }],
        }),
      );
    }
    say(
      `running ${WORKERS} workers against it; up to ${LANES} jobs of the migration run at once (its lanes), each range exactly once`,
    );
    const running = workers.map((w) => w.run({ untilDone: true }));

    const tty = process.stdout.isTTY;
    let lastShown = -1;
    let done = false;
    void Promise.all(running).then(() => (done = true));
    while (!done) {
      const [report] = await migrationReports(pool);
      if (report) {
        const tenth = Math.floor(report.progress * 10);
        if (tty)
          process.stdout.write(
            `\r  ${progressBar(report.progress)}  ${report.jobs.finished} jobs  ${report.status}   `,
          );
        else if (tenth > lastShown) say(`  ${progressBar(report.progress)}  ${report.jobs.finished} jobs`);
        lastShown = Math.max(lastShown, tenth);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await Promise.all(running);

    const [report] = await migrationReports(pool);
    if (tty)
      process.stdout.write(
        `\r  ${progressBar(report?.progress ?? 0)}  ${report?.jobs.finished} jobs  ${report?.status}   \n`,
      );
    const { rows } = await pool.query<{ copied: string; wrong: string }>(
      'SELECT count(*) FILTER (WHERE price_cents_big = price_cents) AS copied, count(*) FILTER (WHERE price_cents_big IS DISTINCT FROM price_cents) AS wrong FROM items',
    );
    const seconds =
      report?.startedAt && report.finishedAt ? (report.finishedAt.getTime() - report.startedAt.getTime()) / 1000 : NaN;
    say('');
    say(`migration ${report?.name}: ${report?.status} in ${seconds.toFixed(2)} s`);
    say(`  rows copied: ${Number(rows[0]?.copied).toLocaleString('en')}, rows left wrong: ${rows[0]?.wrong}`);
    say(`  jobs: ${report?.jobs.finished} finished, ${report?.jobs.failed} failed`);
    const total = [...jobsBy.values()].reduce((a, b) => a + b, 0);
    for (let n = 1; n <= WORKERS; n += 1) {
      const jobs = jobsBy.get(n) ?? 0;
      say(
        `  worker ${n}: ran ${jobs} jobs (${total === 0 ? 0 : Math.round((100 * jobs) / total)} % of them), ` +
          `found every lane busy ${lockedOut.get(n) ?? 0} times`,
      );
    }
    say(
      `done in ${((Date.now() - started) / 1000).toFixed(1)} s. Try \`bbm status\` against your own database next (see README).`,
    );
    if (report?.status !== 'finished' || rows[0]?.wrong !== '0') process.exitCode = 1;
  } finally {
    await Promise.all(workers.map((w) => w.close()));
    await pool.end();
    await cleanup();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`demo failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
