/**
 * `npm run bench`: the engine against the plain loop it replaces, side by side on one database.
 *
 * Both rewrite every row of a 1,000,000-row table in batches of 1,000: the plain loop finds each
 * batch's end with the same index query the engine uses and runs `UPDATE … WHERE id BETWEEN`,
 * one autocommitted statement each; the engine drains a migration whose work function runs the
 * same UPDATE. A fresh table speeds up over its first rewrites, and whichever method runs second
 * in a round gains from that drift, so: unmeasured warm-up passes first, then rounds in pairs,
 * plain-then-engine and engine-then-plain. A pair's ratio is the geometric mean of its two
 * rounds' engine/plain ratios, which cancels the order effect; `ratio` is the median over pairs,
 * and the rows/s reported are each method's median pass.
 *
 *   npm run bench -- [--rows N] [--batch-size N] [--pairs N] [--warmup N] [--json]
 */
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { pino } from 'pino';
import { Worker } from '../src/bbm/worker.ts';
import type { Work } from '../src/bbm/types.ts';
import { createPool } from '../src/store/db.ts';
import { startEmbeddedPostgres, type EmbeddedCluster } from '../src/store/embedded.ts';
import { migrateSchema } from '../src/store/migrate.ts';

const { values: flags } = parseArgs({
  options: {
    rows: { type: 'string', default: '1000000' },
    'batch-size': { type: 'string', default: '1000' },
    pairs: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '3' },
    json: { type: 'boolean', default: false },
  },
});
const ROWS = Number(flags.rows);
const BATCH = Number(flags['batch-size']);
const PAIRS = Number(flags.pairs);
const WARMUP = Number(flags.warmup);
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
    for (let start = 1n; start <= max; ) {
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

let pass = 0;
async function engine(pool: pg.Pool): Promise<number> {
  pass += 1;
  await pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name)
     VALUES ($1, $2, 'bench.hits', 'bench_items', 'id')`,
    [`bench_${pass}`, BATCH],
  );
  const worker = new Worker({ pool, work: [work], logger: pino({ level: 'silent' }), startupJitterMs: 0, intervalMs: 1 });
  const started = performance.now();
  await worker.run({ untilDone: true });
  return performance.now() - started;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main() {
  let cluster: EmbeddedCluster | undefined;
  let url = process.env.DATABASE_URL;
  if (!url) {
    cluster = await startEmbeddedPostgres();
    url = cluster.connectionString();
  }
  const pool = createPool({ connectionString: url, max: 4 });
  try {
    await migrateSchema(pool);
    await pool.query('DROP TABLE IF EXISTS bench_items');
    await pool.query('CREATE TABLE bench_items (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0, payload text)');
    await pool.query(`INSERT INTO bench_items (id, payload) SELECT i, md5(i::text) FROM generate_series(1, $1::int) i`, [ROWS]);
    await pool.query('VACUUM ANALYZE bench_items');
    log(`${ROWS.toLocaleString('en')} rows, batches of ${BATCH}; ${WARMUP} warm-up passes of each, then ${PAIRS} pairs of measured rounds`);

    for (let i = 0; i < WARMUP; i += 1) {
      await plainLoop(pool);
      await engine(pool);
      log(`  warm-up ${i + 1} done`);
    }
    const raw: number[] = [];
    const eng: number[] = [];
    for (let round = 0; round < 2 * PAIRS; round += 1) {
      // Alternate which goes first, so neither always runs on a table the other just rewrote.
      const order = round % 2 === 0 ? ['raw', 'engine'] : ['engine', 'raw'];
      for (const which of order) {
        if (which === 'raw') raw.push(await plainLoop(pool));
        else eng.push(await engine(pool));
      }
      const [rawMs, engineMs] = [raw.at(-1)!, eng.at(-1)!];
      log(
        `  round ${round + 1}: plain ${(ROWS / (rawMs / 1000)).toFixed(0)} rows/s, engine ${(ROWS / (engineMs / 1000)).toFixed(0)} rows/s, ratio ${(rawMs / engineMs).toFixed(3)}`,
      );
    }
    const rawRowsPerSec = Math.round(ROWS / (median(raw) / 1000));
    const engineRowsPerSec = Math.round(ROWS / (median(eng) / 1000));
    // Rates are rows over time, so the engine/plain ratio of a round is plain time over engine time.
    const roundRatios = raw.map((rawMs, i) => rawMs / eng[i]!);
    const pairRatios = Array.from({ length: PAIRS }, (_, p) => Math.sqrt(roundRatios[2 * p]! * roundRatios[2 * p + 1]!));
    const ratio = Math.round(median(pairRatios) * 1000) / 1000;
    if (flags.json) {
      process.stdout.write(`${JSON.stringify({ rows: ROWS, batchSize: BATCH, rawRowsPerSec, engineRowsPerSec, ratio })}\n`);
    } else {
      log(`plain loop: ${rawRowsPerSec.toLocaleString('en')} rows/s (median)`);
      log(`engine:     ${engineRowsPerSec.toLocaleString('en')} rows/s (median)`);
      log(`ratio engine/plain: ${ratio} (median over pairs of rounds: ${pairRatios.map((r) => r.toFixed(3)).join(', ')})`);
    }
  } finally {
    await pool.end();
    await cluster?.stop();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
