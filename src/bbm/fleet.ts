/**
 * What `bbm run` runs: a worker for each database it serves, each started when its database is
 * ready (pg-bbm's schema applied first), all sharing the process's lanes when there are several
 * (shared-lanes.ts). A database that is down, or fails to start, leaves the others running: it is
 * waited for and retried with backoff, and shown as down. With one database, a start-up failure
 * that waiting would not mend (a wrong password, a missing database) ends the run at once instead,
 * as there is nothing else to run.
 */
import { migrateSchema } from '../store/apply-schema.ts';
import { createPool } from '../store/db.ts';
import { Backoff, jittered, sleep } from './backoff.ts';
import { resolveNotify, resolveOptions } from './config.ts';
import { ConfigError } from './errors.ts';
import { resolveHealth } from './health.ts';
import { resolveSchedules, schedulesIn } from './schedules.ts';
import { WorkRegistry } from './work-registry.ts';
import type { DatabaseTarget } from './databases.ts';
import type { Logger } from './log.ts';
import { SharedLanes } from './shared-lanes.ts';
import { whenDatabaseReady } from './startup.ts';
import type { RunLoopOptions, Schedule, WorkerObserver, WorkerParams } from './types.ts';
import { Worker } from './worker.ts';

export interface FleetParams extends Omit<
  WorkerParams,
  'pool' | 'connectionString' | 'database' | 'laneShare' | 'observers' | 'logger' | 'schedules'
> {
  databases: readonly DatabaseTarget[];
  logger: Logger;
  /** The observers of each database's worker (`undefined`: the one database of a process without `databases`). */
  observersFor?: (database: string | undefined) => readonly WorkerObserver[];
  /** A schedule with `databases` is enqueued in those only; without, in every database. */
  schedules?: readonly Schedule[];
  /** Apply pg-bbm's schema before starting [true]. */
  migrate?: boolean;
}

/** Waits between starts of a database that failed to start: from 1 s, doubling, up to 5 min. */
const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 300_000;

export class Fleet {
  readonly #params: FleetParams;
  readonly #log: Logger;
  readonly #share: SharedLanes | undefined;
  /** With `untilDone`: the databases that could not be started for a reason waiting does not mend. */
  readonly #failed = new Map<string, Error>();
  readonly #workers = new Set<Worker>();
  /** Aborted by stop(), which may come before run() (a signal during start-up). */
  readonly #stopping = new AbortController();
  #ran = false;

  constructor(params: FleetParams) {
    const names = params.databases.map((target) => target.name);
    if (names.length === 0) throw new ConfigError('a fleet needs a database');
    if (names.length > 1 && names.includes(undefined)) throw new ConfigError('databases of a fleet need names');
    // What a worker checks when it is made, checked once here: a config error is not a database
    // that is down, to be retried.
    resolveOptions(params);
    resolveNotify(params.notify);
    resolveHealth(params.health);
    resolveSchedules(params.schedules ?? [], new WorkRegistry(params.work));
    this.#params = params;
    this.#log = params.logger;
    // Several databases share the process's lanes; one alone has them all, as a worker does.
    this.#share = names.length > 1 ? new SharedLanes(params.concurrency ?? 1) : undefined;
  }

  /**
   * With `untilDone`, the databases left unserved: their start failed for a reason waiting does
   * not mend (a wrong password, a missing database), by name.
   */
  get failed(): ReadonlyMap<string, Error> {
    return this.#failed;
  }

  /** Serves every database until stop() (or, with `untilDone`, until each has nothing runnable left). */
  async run(loop: RunLoopOptions = {}): Promise<void> {
    if (this.#ran) throw new Error('a fleet runs once');
    this.#ran = true;
    await Promise.all(this.#params.databases.map((target) => this.#serve(target, loop)));
  }

  /** Ends every database's loop after its jobs in flight (or, with `abort`, rolls them back). */
  async stop({ abort = false }: { abort?: boolean } = {}): Promise<void> {
    this.#stopping.abort();
    await Promise.all([...this.#workers].map((worker) => worker.stop({ abort })));
  }

  async #serve(target: DatabaseTarget, loop: RunLoopOptions): Promise<void> {
    const { name } = target;
    const log = name === undefined ? this.#log : this.#log.child({ database: name });
    const alone = this.#params.databases.length === 1;
    const backoff = new Backoff(RETRY_FIRST_MS, RETRY_MAX_MS);
    const stopping = this.#stopping.signal;
    while (!stopping.aborted) {
      try {
        if (!(await this.#start(target, log))) break;
        await this.#work(target, loop);
        break;
      } catch (error) {
        if (alone || error instanceof ConfigError) throw error;
        if (loop.untilDone) {
          // A drain that cannot reach this database ends without it, and says so (exit 1).
          this.#failed.set(name!, error as Error);
          log.error({ err: error }, `database ${name} could not be served: left undrained`);
          break;
        }
        const retryInMs = jittered(backoff.next(), 0.2);
        log.error({ err: error, retry_in_ms: retryInMs }, `database ${name} could not be served: retrying`);
        await sleep(retryInMs, stopping);
      }
    }
  }

  /** Waits for the database and applies pg-bbm's schema; false when stopped meanwhile. */
  async #start({ url }: DatabaseTarget, log: Logger): Promise<boolean> {
    const pool = createPool({ connectionString: url, max: 1, applicationName: 'bbm run' });
    try {
      const ready = await whenDatabaseReady(
        pool,
        async () => {
          if (this.#params.migrate === false) return true;
          const { functions, citus } = await migrateSchema(pool);
          if (citus?.twoPhaseCommit === false) {
            log.warn({ reason: citus.reason }, 'Citus: jobs whose work writes one shard will commit in one phase');
          }
          if (functions.outcome === 'newer') {
            // A rolling deploy: newer workers run beside this one, on their functions.
            log.warn(
              { functions_version: functions.installedVersion, version: functions.version },
              'the database has a newer release of the pg-bbm functions: left in place',
            );
          }
          return true;
        },
        { log, signal: this.#stopping.signal },
      );
      return ready === true && !this.#stopping.signal.aborted;
    } finally {
      await pool.end();
    }
  }

  async #work({ name, url }: DatabaseTarget, loop: RunLoopOptions): Promise<void> {
    const {
      databases: _databases,
      observersFor,
      schedules,
      migrate: _migrate,
      logger: _logger,
      ...params
    } = this.#params;
    const own = schedules && schedulesIn(schedules, name);
    const worker = new Worker({
      ...params,
      connectionString: url,
      // The worker adds `database` to its lines itself.
      logger: this.#log,
      observers: observersFor?.(name) ?? [],
      ...(own && own.length > 0 && { schedules: own }),
      ...(name !== undefined && { database: name }),
      ...(this.#share && name !== undefined && { laneShare: this.#share.for(name) }),
    });
    this.#workers.add(worker);
    try {
      // A stop that came while this worker was being made reaches it now.
      if (!this.#stopping.signal.aborted) await worker.run(loop);
    } finally {
      this.#workers.delete(worker);
      await worker.close();
    }
  }
}
