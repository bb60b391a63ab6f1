/**
 * The foreground section of `npm run bench`: a migration run beside a synthetic foreground load,
 * a pgbench-like client updating random single rows of the same table at a fixed rate, as an
 * application would. Three phases on the same table: the foreground alone (its baseline), beside
 * the engine with health holds off (unthrottled), and beside the engine with them on. Reports
 * the foreground's p99 latency in each, and the migration's rows/s beside it.
 */
import type pg from 'pg';
import type { Work } from '../src/bbm/types.ts';
import { drain } from './drain.ts';

export interface ForegroundResult {
  /** Foreground updates per second asked for. */
  rate: number;
  lanes: number;
  baselineP99Ms: number;
  unthrottledP99Ms: number;
  heldP99Ms: number;
  unthrottledRowsPerSec: number;
  heldRowsPerSec: number;
}

const FOREGROUND_UPDATE = 'UPDATE bench_items SET payload = md5(random()::text) WHERE id = $1';

function p99(samples: number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))]! * 100) / 100;
}

/** Runs the foreground load until `until` settles; returns each update's latency in ms. */
async function foregroundLoad(
  pool: pg.Pool,
  rows: number,
  perSecond: number,
  until: Promise<unknown>,
): Promise<number[]> {
  let done = false;
  void until.finally(() => (done = true));
  const client = await pool.connect();
  const latencies: number[] = [];
  try {
    const intervalMs = 1000 / perSecond;
    let next = performance.now();
    while (!done) {
      const id = 1 + Math.floor(Math.random() * rows);
      const started = performance.now();
      await client.query(FOREGROUND_UPDATE, [id]);
      latencies.push(performance.now() - started);
      // A fixed arrival rate: the next update is due one interval after the last was due.
      next += intervalMs;
      const wait = next - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      else next = performance.now();
    }
  } finally {
    client.release();
  }
  return latencies;
}

export async function foreground(
  pool: pg.Pool,
  {
    rows,
    batch,
    work,
    lanes = 4,
    perSecond = 200,
    baselineMs = 5_000,
  }: { rows: number; batch: number; work: Work; lanes?: number; perSecond?: number; baselineMs?: number },
): Promise<ForegroundResult> {
  const baseline = await foregroundLoad(
    pool,
    rows,
    perSecond,
    new Promise((resolve) => setTimeout(resolve, baselineMs)),
  );

  const unthrottledRun = drain(pool, { work, batch, lanes, health: false });
  const unthrottled = await foregroundLoad(pool, rows, perSecond, unthrottledRun);
  const unthrottledMs = await unthrottledRun;
  await pool.query('VACUUM bench_items');

  // Every hold on, checked often enough to act within a run this short.
  const heldRun = drain(pool, { work, batch, lanes, health: { checkMs: 500, holdMs: 2_000 } });
  const held = await foregroundLoad(pool, rows, perSecond, heldRun);
  const heldMs = await heldRun;

  return {
    rate: perSecond,
    lanes,
    baselineP99Ms: p99(baseline),
    unthrottledP99Ms: p99(unthrottled),
    heldP99Ms: p99(held),
    unthrottledRowsPerSec: Math.round(rows / (unthrottledMs / 1000)),
    heldRowsPerSec: Math.round(rows / (heldMs / 1000)),
  };
}
