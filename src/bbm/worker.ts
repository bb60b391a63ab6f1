/**
 * A worker: `concurrency` lanes, each a loop of runs on its own connection, each run one
 * transaction (see run.ts). After a run that did something the next starts at once, so a
 * migration drains at database speed; idle, failing or locked-out lanes back off exponentially,
 * with jitter, up to a cap, and are woken early when a sibling lane sees a migration change.
 *
 * The worker is made of parts: the lanes (lane.ts) ask one pacing object (pacer.ts) before and
 * after each run; the controllers (health holds, commit probes, latency lanes, schedules, the
 * heartbeat, the lane-stall watch, notifications) run beside them, each in a file of its own, and act on the
 * lanes only through that object. They talk to the database on a pool of their own.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { createPool, siblingPool } from '../store/db.ts';
import { retireWorker } from '../store/workers.ts';
import { sleep } from './backoff.ts';
import { CommitProbes } from './commit-probes.ts';
import { resolveNotify, resolveOptions, type ResolvedOptions } from './config.ts';
import { ConfigError } from './errors.ts';
import { resolveHealth } from './health.ts';
import { HealthHolds } from './health-holds.ts';
import { Heartbeat } from './heartbeat.ts';
import { laneLoop, type LaneContext } from './lane.ts';
import { LaneWatch } from './lane-watch.ts';
import { LatencyLanes } from './latency-lanes.ts';
import { defaultLibraryLogger, type Logger } from './log.ts';
import { Notifier } from './notifier.ts';
import { tellObservers, type Tell } from './observe.ts';
import { CommitWatch, LatencyWatch, type BatchSizer } from './pace.ts';
import { Pacer } from './pacer.ts';
import { reportRun } from './report.ts';
import { Runner } from './run.ts';
import { Scheduler } from './scheduler.ts';
import type { LaneShare } from './shared-lanes.ts';
import { resolveSchedules } from './schedules.ts';
import type { RunLoopOptions, RunResult, WorkerParams } from './types.ts';
import { WorkRegistry } from './work-registry.ts';

/**
 * Connections of the worker's controllers (health checks, commit probes, lane steering, slow
 * start, schedules, the throttle, heartbeats, notifications: their statements are short, and no
 * connection is held while a webhook answers), in a pool of their own: a lane holds its connection
 * between jobs, so controllers that asked the lanes' pool could wait behind lanes that wait for
 * them. Three: a health check beside a round of commit probes, whose quiet rounds hold the quiet
 * lock on a connection of their own.
 */
const CONTROL_CONNECTIONS = 3;

export class Worker {
  readonly options: ResolvedOptions;
  /** This worker's id among the live workers (batched_background_migration_workers). */
  readonly id = randomUUID();
  /** The lanes' connections: one a lane, and one for the range cut beside a job. */
  readonly #pool: pg.Pool;
  readonly #ownsPool: boolean;
  /** The controllers' connections (CONTROL_CONNECTIONS), open while the loop runs. */
  #control: pg.Pool | undefined;
  readonly #log: Logger;
  readonly #tell: Tell;
  /** One runner per lane; runOnce() uses the first. */
  readonly #runners: Runner[];
  readonly #pacer: Pacer;
  readonly #watch: LaneWatch;
  readonly #heartbeat: Heartbeat;
  readonly #health: HealthHolds | undefined;
  readonly #notifier: Notifier | undefined;
  /** Aborted by stop(): the loop ends after the run in flight. */
  #stopping = new AbortController();
  /** Aborted by stop({ abort: true }): the run in flight is cancelled and rolled back. */
  readonly #hardStop = new AbortController();
  #loop: Promise<void> | undefined;
  readonly #share: LaneShare | undefined;

  constructor(params: WorkerParams) {
    this.options = resolveOptions(params);
    this.#share = params.laneShare;
    const notify = resolveNotify(params.notify);
    const registry = new WorkRegistry(params.work);
    [this.#pool, this.#ownsPool] = lanesPool(params, this.options.concurrency);
    const log = (params.logger ?? defaultLibraryLogger()).child({
      worker_pid: process.pid,
      ...(params.database !== undefined && { database: params.database }),
    });
    this.#log = log;
    const observers = params.observers ?? [];
    const tell: Tell = (call) => tellObservers(observers, log, call);
    this.#tell = tell;
    const db = () => this.#controlDb;
    const lanes = this.options.concurrency;
    this.#watch = new LaneWatch(lanes, this.options.runTimeoutMs + 60_000, log);
    const dutyCycle = () => this.#pacer.dutyCycle;
    this.#heartbeat = new Heartbeat(db, { id: this.id, workNames: registry.names, dutyCycle }, log);
    if (notify.length > 0) this.#notifier = new Notifier(db, notify, this.options.notifyCheckMs, log, tell);
    const pacer = new Pacer(this.options, lanes, this.#watch, { throttle: params.throttle, db, log });
    this.#pacer = pacer;
    const schedules = resolveSchedules(params.schedules ?? [], registry);
    if (schedules.length > 0) pacer.addGate(new Scheduler(db, schedules, this.options, log));
    const health = resolveHealth(params.health);
    if (health) {
      const factor = health.commitLatencyFactor;
      const stopping = () => this.#stopping.signal;
      const context = { db, workerId: this.id, stopping, checkMs: health.checkMs, pace: pacer, log, tell };
      const probes = factor === null ? null : new CommitProbes(new CommitWatch(factor), context);
      this.#health = new HealthHolds(db, health, probes, log, tell);
      pacer.addGate(this.#health);
      if (probes) pacer.addFollower(probes);
      if (health.latency) {
        const lanesContext = {
          db,
          checkMs: health.checkMs,
          growsThroughProbes: probes !== null,
          pace: pacer,
          log,
          tell,
        };
        pacer.addFollower(new LatencyLanes(new LatencyWatch(health.latencyFactor), lanesContext));
      }
    }
    const sizers = new Map<bigint, BatchSizer>();
    const hardStop = this.#hardStop.signal;
    const runner = () => new Runner({ pool: this.#pool, registry, options: this.options, log, hardStop, sizers });
    this.#runners = Array.from({ length: lanes }, runner);
  }

  /** One run, reported like the loop reports it. */
  runOnce(): Promise<RunResult> {
    return this.#runOnce(this.#runners[0]!, false);
  }

  async #runOnce(runner: Runner, chain: boolean): Promise<RunResult> {
    const result = await runner.runOnce({ chain });
    this.#reported(result);
    return result;
  }

  #reported(result: RunResult): void {
    reportRun(this.#log, result);
    this.#tell((observer) => observer.run?.(result));
  }

  /** Runs until stop() is called (or, with `untilDone`, until nothing runnable remains). */
  run(loop: RunLoopOptions = {}): Promise<void> {
    if (this.#loop) throw new Error('this worker is already running');
    this.#stopping = new AbortController();
    this.#loop = this.#runLoop(loop).finally(() => {
      this.#loop = undefined;
    });
    return this.#loop;
  }

  /**
   * Ends the loop after the job in flight commits. With `abort`, the job in flight is cancelled
   * and its transaction rolled back instead. Resolves when the loop has ended.
   */
  async stop({ abort = false }: { abort?: boolean } = {}): Promise<void> {
    this.#stopping.abort();
    if (abort) this.#hardStop.abort();
    await this.#loop;
  }

  /** Stops and ends the pool the worker opened itself. */
  async close(): Promise<void> {
    await this.stop();
    if (this.#ownsPool) await this.#pool.end();
  }

  async #runLoop({ untilDone = false }: RunLoopOptions): Promise<void> {
    const { options } = this;
    const stopping = this.#stopping.signal;
    // A one-shot drain has no fleet to spread out: it starts at once.
    const startupJitterMs = untilDone ? 0 : Math.round(Math.random() * options.startupJitterMs);
    this.#log.info({ options, startup_jitter_ms: startupJitterMs, worker_id: this.id }, 'worker starting');
    const control = siblingPool(this.#pool, { max: CONTROL_CONNECTIONS });
    this.#control = control;
    this.#watch.start();
    const lane: LaneContext = {
      pace: this.#pacer,
      steps: this.#watch,
      stopping,
      untilDone,
      run: (runner, chain) => this.#runOnce(runner, chain),
      reported: (result) => this.#reported(result),
      sleeping: (ms) => this.#tell((observer) => observer.sleep?.(ms)),
      waitedForShare: (ms) => this.#tell((observer) => observer.laneWait?.(ms)),
      share: this.#share,
    };
    try {
      await this.#heartbeat.start();
      this.#notifier?.start();
      await sleep(startupJitterMs, stopping);
      await Promise.all(this.#runners.map((runner, index) => laneLoop(index, runner, lane)));
    } finally {
      this.#watch.stop();
      await this.#heartbeat.stop();
      await this.#notifier?.stop();
      await this.#health?.settled();
      await Promise.all(this.#runners.map((runner) => runner.release()));
      await retireWorker(control, this.id).catch((error: unknown) =>
        this.#log.warn({ err: error }, 'could not retire worker'),
      );
      this.#control = undefined;
      await control.end();
    }
    this.#log.info('worker stopped');
  }

  /** The controllers' pool: open while the loop runs. */
  get #controlDb(): pg.Pool {
    if (!this.#control) throw new Error('the worker is not running');
    return this.#control;
  }
}

/** The lanes' pool, and whether the worker opened it (and ends it on close). */
function lanesPool(params: WorkerParams, concurrency: number): [pg.Pool, boolean] {
  if (params.pool) {
    // Lanes beyond the pool's size would wait for connections that lanes hold between jobs.
    const max = params.pool.options.max;
    if (max < concurrency) {
      throw new ConfigError(
        `concurrency ${concurrency} needs a pool of at least ${concurrency} connections (one a lane, and one more for cuts beside one-lane jobs); the pool given has max ${max}`,
      );
    }
    return [params.pool, false];
  }
  if (params.connectionString) {
    return [createPool({ connectionString: params.connectionString, max: concurrency + 1 }), true];
  }
  throw new ConfigError('a worker needs `pool` or `connectionString`');
}

export function createWorker(params: WorkerParams): Worker {
  return new Worker(params);
}
