/**
 * The foreground section of `npm run bench`: a migration run beside a synthetic foreground load,
 * a pgbench-like client updating random single rows of the same table at a fixed rate, as an
 * application would, in a process of its own (in this one, the engine's work on the event loop
 * would count as database latency). Phases: the foreground alone, beside the engine with health
 * holds off, with them on, with them and foreground protection (commitLatencyFactor) on, and
 * beside one lane at smaller batches. Three phases on the same table: the foreground alone (its baseline), beside
 * the engine with health holds off (unthrottled), and beside the engine with them on. Reports
 * the foreground's p99 latency in each, and the migration's rows/s beside it.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import type { Logger } from 'pino';
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
  /** Holds on and foreground protection too (health.commitLatencyFactor). */
  commitLatencyFactor: number;
  guardedP99Ms: number;
  guardedRowsPerSec: number;
  /**
   * The trade-off, one lane at smaller batches (health holds off): each point's foreground p99
   * and migration rows/s. Each job's COMMIT flushes its WAL, and the foreground's commits wait
   * behind those flushes on the same disk: smaller jobs, shorter waits, less speed.
   */
  curve: Array<{ lanes: number; batchSize: number; p99Ms: number; rowsPerSec: number }>;
}

function p99(samples: number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))]! * 100) / 100;
}

const CLIENT = fileURLToPath(new URL('./foreground-client.mjs', import.meta.url));

/**
 * Runs the foreground load in a process of its own (foreground-client.mjs) until `until`
 * settles; returns each update's latency in ms.
 */
async function foregroundLoad(
  url: string,
  rows: number,
  perSecond: number,
  until: () => Promise<unknown>,
): Promise<number[]> {
  const child = spawn(process.execPath, [CLIENT, url, String(rows), String(perSecond)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout });
  const output: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const ready = new Promise<void>((resolve, reject) => {
    lines.on('line', (line) => {
      if (line === 'ready') resolve();
      else output.push(line);
    });
    void exited.then(() => reject(new Error('the foreground client exited before it was ready')));
  });
  await ready;
  await until();
  child.stdin.end();
  const code = await exited;
  if (code !== 0) throw new Error(`the foreground client exited with ${code}`);
  return JSON.parse(output.join('')) as number[];
}

export async function foreground(
  pool: pg.Pool,
  {
    url,
    rows,
    batch,
    work,
    lanes = 4,
    perSecond = 200,
    baselineMs = 5_000,
    curveBatchSizes = [100, 300, 1_000],
    commitLatencyFactor = 1.5,
    guardedLogger,
  }: {
    url: string;
    rows: number;
    batch: number;
    work: Work;
    lanes?: number;
    perSecond?: number;
    baselineMs?: number;
    curveBatchSizes?: number[];
    commitLatencyFactor?: number;
    /** The protected phase's worker logger (its controller's decisions); silent unless given. */
    guardedLogger?: Logger;
  },
): Promise<ForegroundResult> {
  const baseline = await foregroundLoad(
    url,
    rows,
    perSecond,
    () => new Promise((resolve) => setTimeout(resolve, baselineMs)),
  );

  await pool.query('VACUUM bench_items');
  let unthrottledMs = 0;
  const unthrottled = await foregroundLoad(url, rows, perSecond, async () => {
    unthrottledMs = await drain(pool, { work, batch, lanes, health: false });
  });
  await pool.query('VACUUM bench_items');

  // Every hold on, checked often enough to act within a run this short.
  let heldMs = 0;
  const held = await foregroundLoad(url, rows, perSecond, async () => {
    heldMs = await drain(pool, { work, batch, lanes, health: { checkMs: 500, holdMs: 2_000 } });
  });

  let guardedMs = 0;
  await pool.query('VACUUM bench_items');
  const guarded = await foregroundLoad(url, rows, perSecond, async () => {
    guardedMs = await drain(pool, {
      work,
      batch,
      lanes,
      // Checked often enough that the probes learn their usual (50 of them) early in a run this short.
      health: { checkMs: 200, holdMs: 2_000, commitLatencyFactor },
      ...(guardedLogger && { logger: guardedLogger }),
    });
  });

  const curve = [];
  for (const batchSize of curveBatchSizes) {
    await pool.query('VACUUM bench_items');
    let ms = 0;
    const latencies = await foregroundLoad(url, rows, perSecond, async () => {
      ms = await drain(pool, { work, batch: batchSize, lanes: 1, health: false });
    });
    curve.push({ lanes: 1, batchSize, p99Ms: p99(latencies), rowsPerSec: Math.round(rows / (ms / 1000)) });
  }

  return {
    rate: perSecond,
    lanes,
    baselineP99Ms: p99(baseline),
    unthrottledP99Ms: p99(unthrottled),
    heldP99Ms: p99(held),
    unthrottledRowsPerSec: Math.round(rows / (unthrottledMs / 1000)),
    heldRowsPerSec: Math.round(rows / (heldMs / 1000)),
    commitLatencyFactor,
    guardedP99Ms: p99(guarded),
    guardedRowsPerSec: Math.round(rows / (guardedMs / 1000)),
    curve,
  };
}
