/**
 * What the benchmarks' engine sections share: a worker as they run it, and (every throughput
 * section) enqueueing a fresh migration over bench_items and draining it.
 */
import type pg from 'pg';
import { pino, type Logger } from 'pino';
import type { AnyWork, HealthOptions, RunResult, Work, WorkerObserver } from '../src/bbm/types.ts';
import { Worker } from '../src/bbm/worker.ts';
import { createPool } from '../src/store/db.ts';

const quiet = pino({ level: 'silent' });
let pass = 0;

/**
 * A worker as the benchmarks run it: silent, no start-up jitter, no pause between runs, one lane
 * per `lanes`; with `jobDurationsMs`, each successful job's duration is pushed onto it; `observers`
 * as a worker's. An idle or turned-away lane looks again after 1 ms, unless `deployed`: then it
 * waits as `bbm run` does by default (`intervalMs` 10 s, doubling), which is what a user gets.
 */
export function benchWorker(
  pool: pg.Pool,
  {
    work,
    lanes = 1,
    health,
    deployed = false,
    jobDurationsMs,
    observers = [],
    logger = quiet,
  }: {
    work: AnyWork[];
    lanes?: number;
    health: HealthOptions | false | undefined;
    deployed?: boolean;
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
    ...(!deployed && { intervalMs: 1 }),
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
 * its duration in ms. `health: false` measures the engine's own speed (no holds, no slow start;
 * undefined: the worker's defaults, its waits included). `logger` (silent unless given) is the worker's. With
 * `separate`, `lanes` workers of concurrency 1 drain it instead, each on a pool of its own to
 * `separate.url`, as as many `bbm run --concurrency 1` processes would (one Node process here).
 */
export async function drain(
  pool: pg.Pool,
  {
    work,
    batch,
    lanes,
    health,
    logger,
    separate,
  }: {
    work: Work;
    batch: number;
    lanes: number;
    health: HealthOptions | false | undefined;
    logger?: Logger;
    separate?: { url: string };
  },
): Promise<number> {
  pass += 1;
  await pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
     VALUES ($1, $2, $3, 'bench_items', 'id', $4)`,
    [`bench_${pass}`, batch, work.name, lanes],
  );
  const pools = separate
    ? Array.from({ length: lanes }, () => createPool({ connectionString: separate.url, max: 3 }))
    : [pool];
  const workerLanes = separate ? 1 : lanes;
  const workers = pools.map((own) =>
    benchWorker(own, {
      work: [work],
      lanes: workerLanes,
      health,
      deployed: health === undefined,
      ...(logger && { logger }),
    }),
  );
  const started = performance.now();
  try {
    await Promise.all(workers.map((worker) => worker.run({ untilDone: true })));
    return performance.now() - started;
  } finally {
    if (separate) await Promise.all(pools.map((own) => own.end()));
  }
}
