/**
 * What the benchmarks' engine sections share: a worker as they run it, and (every throughput
 * section) enqueueing a fresh migration over bench_items and draining it.
 */
import type pg from 'pg';
import { pino, type Logger } from 'pino';
import type { AnyWork, HealthOptions, RunResult, Work, WorkerObserver } from '../src/bbm/types.ts';
import { Worker } from '../src/bbm/worker.ts';

const quiet = pino({ level: 'silent' });
let pass = 0;

/**
 * A worker as the benchmarks run it: silent, no start-up jitter, no pause between runs, one lane
 * per `lanes`; with `jobDurationsMs`, each successful job's duration is pushed onto it; `observers` as a worker's.
 */
export function benchWorker(
  pool: pg.Pool,
  {
    work,
    lanes = 1,
    health,
    jobDurationsMs,
    observers = [],
    logger = quiet,
  }: {
    work: AnyWork[];
    lanes?: number;
    health: HealthOptions | false;
    jobDurationsMs?: number[];
    observers?: WorkerObserver[];
    logger?: Logger;
  },
): Worker {
  return new Worker({
    pool,
    work,
    logger,
    startupJitterMs: 0,
    intervalMs: 1,
    concurrency: lanes,
    health,
    observers: [
      ...observers,
      ...(jobDurationsMs
        ? [{ run: (r: RunResult) => r.outcome === 'job_succeeded' && r.job && jobDurationsMs.push(r.job.durationMs) }]
        : []),
    ],
  });
}

/**
 * Drains a fresh migration with `lanes` lanes and one worker of that concurrency; resolves with
 * its duration in ms. `health: false` measures the engine's own speed (no holds, no slow start).
 * `logger` (silent unless given) is the worker's.
 */
export async function drain(
  pool: pg.Pool,
  {
    work,
    batch,
    lanes,
    health,
    logger,
  }: { work: Work; batch: number; lanes: number; health: HealthOptions | false; logger?: Logger },
): Promise<number> {
  pass += 1;
  await pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
     VALUES ($1, $2, $3, 'bench_items', 'id', $4)`,
    [`bench_${pass}`, batch, work.name, lanes],
  );
  const worker = benchWorker(pool, { work: [work], lanes, health, ...(logger && { logger }) });
  const started = performance.now();
  await worker.run({ untilDone: true });
  return performance.now() - started;
}
