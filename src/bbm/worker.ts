/**
 * A worker: `concurrency` lanes, each a loop of runs on its own connection, each run one
 * transaction (see run.ts). After a run that did something the next starts at once, so a
 * migration drains at database speed; idle, failing or locked-out lanes back off exponentially,
 * with jitter, up to a cap, and are woken early when a sibling lane sees a migration change.
 * Throttle checks and scheduling are the worker's, shared by its lanes.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { hostname } from 'node:os';
import type pg from 'pg';
import { createPool, siblingPool } from '../store/db.ts';
import { announceWorker, HEARTBEAT_MS, probeCommit, retireWorker, whileRunsHeld } from '../store/workers.ts';
import { Backoff, jittered, sleep } from './backoff.ts';
import { resolveOptions, type ResolvedOptions } from './config.ts';
import { ConfigError } from './errors.ts';
import { CORRELATION_ID, defaultLibraryLogger, jobFields, migrationFields, type Logger } from './log.ts';
import { tellObservers } from './observe.ts';
import { WorkRegistry } from './work-registry.ts';
import { CommitWatch, LatencyWatch, type BatchSizer } from './pace.ts';
import { Runner } from './run.ts';
import { checkHealth, resolveHealth, type ResolvedHealth } from './health.ts';
import { growLanes, shedLanes, startInOneLane } from '../store/migration-rows.ts';
import { resolveSchedules, tickSchedules, type ResolvedSchedule } from './schedules.ts';
import type { RunLoopOptions, RunResult, Throttle, WorkerObserver, WorkerParams } from './types.ts';

/** Commits timed per health check for foreground protection. */
const COMMIT_PROBES = 10;
/**
 * How long a quiet round waits for the runs in flight to end. Every take of the fleet waits
 * behind it meanwhile, so it is short; a round that cannot have quiet in time is skipped.
 */
const QUIET_WAIT_MS = 1_000;
/**
 * Mean spacing of the probes of a round (uniform in 0..2×). Back to back, the probes after one
 * that waited for a job's row locks all ran in the moment before the next job took them again, so
 * a round measured the gaps between jobs: one lane of jobs holding the probes' rows for 100 ms
 * showed a median of 0.4-0.9 ms. Spaced at random, they arrive as a foreground's commits do, and
 * see the locks for the share of the time they are held. Quiet rounds are spaced too: on an idle
 * server a spaced commit took 1.0-1.1 ms in the median against 0.4 back to back (measured), so
 * spacing one side only read as pressure with nothing running.
 */
const PROBE_SPACING_MS = 5;
/**
 * Connections of the worker's controllers (health checks, commit probes, lane steering, slow
 * start, schedules, the throttle, heartbeats), in a pool of their own: a lane holds its connection
 * between jobs, so controllers that asked the lanes' pool could wait behind lanes that wait for
 * them. Three: a health check beside a round of commit probes, whose quiet rounds hold the quiet
 * lock on a connection of their own.
 */
const CONTROL_CONNECTIONS = 3;
/** How often the worker looks for a lane that has been stuck in one step (see #watchLanes). */
const WATCH_MS = 10_000;

export class Worker {
  readonly options: ResolvedOptions;
  /** This worker's id among the live workers (batched_background_migration_workers). */
  readonly id = randomUUID();
  readonly #workNames: string[];
  /** The lanes' connections: one a lane, and one for the range cut beside a job. */
  readonly #pool: pg.Pool;
  readonly #ownsPool: boolean;
  /** The controllers' connections (CONTROL_CONNECTIONS), open while the loop runs. */
  #control: pg.Pool | undefined;
  /** What each lane is waiting for, and since when: a lane stuck in one step is logged (#watchLanes). */
  readonly #laneSteps: Array<{ step: string; since: number; told: boolean }>;
  readonly #log: Logger;
  /** One runner per lane; runOnce() uses the first. */
  readonly #runners: Runner[];
  readonly #observers: readonly WorkerObserver[];
  readonly #throttle: Throttle | undefined;
  readonly #schedules: readonly ResolvedSchedule[];
  /** Aborted by stop(): the loop ends after the run in flight. */
  #stopping = new AbortController();
  /** Aborted by stop({ abort: true }): the run in flight is cancelled and rolled back. */
  readonly #hardStop = new AbortController();
  #loop: Promise<void> | undefined;
  /** Aborted (and replaced) to wake every sleeping lane. */
  #wake = new AbortController();
  /** The throttle's last answer, shared by the lanes until the next check is due. */
  #throttleReason: string | false = false;
  #throttleCheckedAt = -Infinity;
  #throttleCheck: Promise<string | false> | undefined;
  #scheduledAt = -Infinity;
  #scheduling: Promise<boolean> | undefined;
  readonly #health: ResolvedHealth | null;
  /** The latency controller: each migration's norm, and when its lanes were last shed or grown. */
  readonly #latency: LatencyWatch | null;
  readonly #lanesSteeredAt = new Map<bigint, number>();
  /** Foreground protection: commit latency steering lanes, then the share of the time this worker's lanes run. */
  readonly #commits: CommitWatch | null;
  /** Until when every lane rests after a job (foreground protection's duty cycle). */
  #restUntil = -Infinity;
  /** A round of commit probes in flight. */
  #probing: Promise<void> | undefined;
  /** Migrations this worker ran jobs of, and when last. */
  readonly #ranLately = new Map<bigint, number>();
  #healthCheckedAt = -Infinity;
  /** A heartbeat in flight. */
  #beating: Promise<void> | undefined;
  #healthCheck: Promise<void> | undefined;

  constructor(params: WorkerParams) {
    this.options = resolveOptions(params);
    const registry = new WorkRegistry(params.work);
    this.#workNames = registry.names;
    if (params.pool) {
      // Lanes beyond the pool's size would wait for connections that lanes hold between jobs.
      const max = params.pool.options.max;
      if (max < this.options.concurrency) {
        throw new ConfigError(
          `concurrency ${this.options.concurrency} needs a pool of at least ${this.options.concurrency} connections (one a lane, and one more for cuts beside one-lane jobs); the pool given has max ${max}`,
        );
      }
      this.#pool = params.pool;
      this.#ownsPool = false;
    } else if (params.connectionString) {
      this.#pool = createPool({ connectionString: params.connectionString, max: this.options.concurrency + 1 });
      this.#ownsPool = true;
    } else {
      throw new ConfigError('a worker needs `pool` or `connectionString`');
    }
    this.#log = (params.logger ?? defaultLibraryLogger()).child({ worker_pid: process.pid });
    this.#laneSteps = Array.from({ length: this.options.concurrency }, () => ({
      step: 'starting',
      since: performance.now(),
      told: false,
    }));
    this.#observers = params.observers ?? [];
    this.#throttle = params.throttle;
    this.#schedules = resolveSchedules(params.schedules ?? [], registry);
    this.#health = resolveHealth(params.health);
    this.#latency = this.#health?.latency ? new LatencyWatch(this.#health.latencyFactor) : null;
    const commitFactor = this.#health?.commitLatencyFactor ?? null;
    const commits = commitFactor === null ? null : new CommitWatch(commitFactor);
    this.#commits = commits;
    const sizers = new Map<bigint, BatchSizer>();
    this.#runners = Array.from(
      { length: this.options.concurrency },
      () =>
        new Runner({
          pool: this.#pool,
          registry,
          options: this.options,
          log: this.#log,
          hardStop: this.#hardStop.signal,
          sizers,
        }),
    );
  }

  /** One run, reported like the loop reports it. */
  runOnce(): Promise<RunResult> {
    return this.#runOnce(this.#runners[0]!, false);
  }

  async #runOnce(runner: Runner, chain: boolean): Promise<RunResult> {
    const result = await runner.runOnce({ chain });
    this.#report(result);
    this.#tell((observer) => observer.run?.(result));
    return result;
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
    const heartbeat = setInterval(
      () => void (this.#beating ??= this.#heartbeat().finally(() => (this.#beating = undefined))),
      HEARTBEAT_MS,
    );
    heartbeat.unref();
    const watch = setInterval(() => this.#watchLanes(), WATCH_MS);
    watch.unref();
    try {
      await this.#heartbeat();
      await sleep(startupJitterMs, stopping);
      await Promise.all(this.#runners.map((runner, lane) => this.#laneLoop(runner, lane, untilDone)));
    } finally {
      clearInterval(heartbeat);
      clearInterval(watch);
      await this.#beating;
      await this.#probing;
      await this.#healthCheck;
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

  /** Notes what a lane waits for next (see #watchLanes); a lane that had been stuck says it moved on. */
  #step(lane: number, step: string): void {
    const current = this.#laneSteps[lane]!;
    const now = performance.now();
    if (current.told) {
      this.#log.warn(
        { lane, step: current.step, waited_ms: Math.round(now - current.since) },
        `lane ${lane} moved on after ${Math.round((now - current.since) / 1000)} s in ${current.step}`,
      );
    }
    current.step = step;
    current.since = now;
    current.told = false;
  }

  /**
   * Says so, once, when a lane has waited in one step (a run, a health check, a connection) for
   * longer than any run may take: by design none does, so such a line is a defect to report, and
   * the only sign of a worker that is alive but does no work.
   */
  #watchLanes(): void {
    const limitMs = this.options.runTimeoutMs + 60_000;
    const now = performance.now();
    this.#laneSteps.forEach((lane, index) => {
      if (lane.told || lane.step === 'sleep' || now - lane.since < limitMs) return;
      lane.told = true;
      this.#log.error(
        { lane: index, step: lane.step, waited_ms: Math.round(now - lane.since) },
        `lane ${index} has waited ${Math.round((now - lane.since) / 1000)} s in ${lane.step}: this worker makes no progress in that lane`,
      );
    });
  }

  /** One lane: runs until stopped (or, with `untilDone`, until it finds nothing to run). */
  async #laneLoop(runner: Runner, lane: number, untilDone: boolean): Promise<void> {
    const { options } = this;
    const stopping = this.#stopping.signal;
    const backoff = new Backoff(options.intervalMs, options.maxIntervalMs);
    while (!stopping.aborted) {
      // With no pause between jobs, each successful run also begins the next (one round trip less).
      const chain = options.pauseMs === 0 && (this.#commits?.dutyCycle ?? 1) === 1;
      if (this.#schedules.length > 0 && performance.now() - this.#scheduledAt >= options.scheduleCheckMs) {
        this.#step(lane, 'scheduling');
        if (await this.#schedule()) backoff.reset();
      }
      if (this.#health && performance.now() - this.#healthCheckedAt >= this.#health.checkMs) {
        this.#step(lane, 'a health check');
        await this.#checkHealth(this.#health);
      }
      if (performance.now() < this.#restUntil) {
        // Foreground protection: every lane of the worker rests (or one lane would take the job
        // another rests after), with nothing begun (a run begun ahead holds its lane and the quiet lock).
        this.#step(lane, 'sleep');
        await runner.release();
        await sleep(this.#restUntil - performance.now(), stopping);
        continue;
      }
      this.#step(lane, 'a run');
      const result = (await this.#throttled(runner)) ?? (await this.#runOnce(runner, chain));
      if (untilDone && result.outcome === 'no_job') {
        this.#wakeLanes();
        break;
      }
      if (result.outcome === 'job_succeeded' && result.migration && this.#commits)
        this.#ranLately.set(result.migration.id, performance.now());
      if (result.outcome === 'job_succeeded' && this.#latency && this.#health) {
        this.#step(lane, 'lane steering');
        await this.#steerLanes(result, this.#latency, this.#health);
      }
      if (result.outcome === 'migration_started' && this.#latency && result.migration) {
        this.#step(lane, 'slow start');
        await this.#slowStart(result.migration);
      }
      // A migration that started, finished or failed changes what the other lanes may find.
      if (result.outcome.startsWith('migration_')) this.#wakeLanes();
      const dutyCycle = this.#commits?.dutyCycle ?? 1;
      if (dutyCycle < 1 && result.outcome === 'job_succeeded' && result.job?.rows !== 0) {
        this.#restUntil = Math.max(this.#restUntil, performance.now() + result.durationMs * (1 / dutyCycle - 1));
      }
      let waitMs = this.#waitAfter(result, backoff);
      // Idle lanes still wake for the next scheduling round.
      if (this.#schedules.length > 0)
        waitMs = Math.min(waitMs, Math.max(0, this.#scheduledAt + options.scheduleCheckMs - performance.now()));
      if (waitMs > 0) {
        this.#step(lane, 'sleep');
        this.#tell((observer) => observer.sleep?.(waitMs));
        await sleep(waitMs, AbortSignal.any([stopping, this.#wake.signal]));
      }
    }
  }

  #wakeLanes(): void {
    if (this.#runners.length === 1) return;
    this.#wake.abort();
    this.#wake = new AbortController();
  }

  /**
   * A `throttled` result for this lane while the throttle holds back (ending any run it began
   * ahead), else undefined. The throttle is asked at most every `throttleCheckMs`, by one lane
   * for all; a throttle that fails is logged and does not hold back.
   */
  async #throttled(runner: Runner): Promise<RunResult | undefined> {
    const throttle = this.#throttle;
    if (!throttle) return undefined;
    if (performance.now() - this.#throttleCheckedAt >= this.options.throttleCheckMs) {
      // One check in flight for all lanes; cleared by a reaction, which runs after the assignment
      // even when the throttle throws synchronously.
      this.#throttleCheck ??= this.#askThrottle(throttle).finally(() => (this.#throttleCheck = undefined));
      this.#throttleReason = await this.#throttleCheck;
    }
    const reason = this.#throttleReason;
    if (!reason) return undefined;
    await runner.release();
    const result: RunResult = { outcome: 'throttled', runId: randomUUID(), error: new Error(reason), durationMs: 0 };
    this.#report(result);
    this.#tell((observer) => observer.run?.(result));
    return result;
  }

  /** The throttle's answer; a throttle that fails is logged and does not hold back. */
  async #askThrottle(throttle: Throttle): Promise<string | false> {
    try {
      return await throttle(this.#controlDb);
    } catch (error) {
      this.#log.warn({ err: error }, 'throttle check failed; not throttling');
      return false;
    } finally {
      this.#throttleCheckedAt = performance.now();
    }
  }

  /**
   * Reads the health signals and sets the holds they call for, one check in flight for all lanes.
   * A new hold is logged once and told to observers (metrics); it is not an error (no Sentry). A
   * check that fails is logged, never fatal: the worker runs on without it.
   */
  #checkHealth(health: ResolvedHealth): Promise<void> {
    this.#healthCheck ??= (async () => {
      try {
        const { holds, released } = await checkHealth(this.#controlDb, health);
        if (released.length > 0) this.#log.info({ migrations: released }, `health hold lifted: ${released.join(', ')}`);
        for (const event of holds) {
          this.#log.warn(
            {
              hold: event.kind,
              hold_reason: event.reason,
              migrations: event.migrations,
              held_until: event.until.toISOString(),
            },
            `health hold: ${event.migrations.join(', ')} set aside: ${event.reason}`,
          );
          this.#tell((observer) => observer.hold?.(event));
        }
      } catch (error) {
        this.#log.warn({ err: error }, 'health check failed; holding nothing back this time');
      } finally {
        this.#healthCheckedAt = performance.now();
      }
      // Beside the lanes, not before them: slow commits would otherwise hold every lane for ten of them.
      const commits = this.#commits;
      if (commits) this.#probing ??= this.#probeCommits(commits, health).finally(() => (this.#probing = undefined));
    })().finally(() => (this.#healthCheck = undefined));
    return this.#healthCheck;
  }

  /**
   * Foreground protection. Times COMMIT_PROBES commits on one connection: in a quiet round (when
   * the watch asks for one), with every run of the fleet held (whileRunsHeld), the baseline;
   * otherwise beside the runs. Under pressure, halves the lanes of the migrations this worker ran
   * lately (for every worker, as the latency controller does), and once they are down to one, the
   * share of the time this worker's lanes run; while healthy, grows that back first, then a lane at
   * a time. With it on, the latency controller only sheds lanes: they grow through the probes.
   * Changes are logged; failing is logged, never fatal.
   */
  async #probeCommits(commits: CommitWatch, health: ResolvedHealth): Promise<void> {
    const quiet = commits.quietDue;
    const startedAt = performance.now();
    let latencies: number[] | undefined;
    try {
      const client = await this.#controlDb.connect();
      // Quiet rounds too (see PROBE_SPACING_MS); a quiet round holds the fleet about 50 ms longer for it.
      const probe = async () => {
        const timed: number[] = [];
        for (let i = 0; i < COMMIT_PROBES; i += 1) {
          await sleep(Math.random() * 2 * PROBE_SPACING_MS, this.#stopping.signal);
          const started = performance.now();
          await probeCommit(client, this.id);
          timed.push(performance.now() - started);
        }
        return timed;
      };
      try {
        latencies = quiet ? await whileRunsHeld(this.#controlDb, QUIET_WAIT_MS, probe) : await probe();
        client.release();
      } catch (error) {
        client.release(error instanceof Error ? error : true);
        throw error;
      }
    } catch (error) {
      this.#log.warn({ err: error }, 'commit latency probe failed; nothing changed');
      return;
    }
    if (!latencies) {
      this.#log.debug(
        `commit latency: runs in flight did not end within ${QUIET_WAIT_MS} ms; no quiet round this time`,
      );
      return;
    }
    if (quiet) {
      commits.observeQuiet(latencies);
      return;
    }
    const { verdict, medianMs, baselineMs } = commits.observe(latencies);
    if (verdict !== 'pressure' && verdict !== 'healthy') return;
    const fields = {
      commit_median_ms: Math.round(medianMs * 100) / 100,
      commit_quiet_median_ms: Math.round(baselineMs * 100) / 100,
    };
    const said = `commits take ${fields.commit_median_ms} ms (median), ${fields.commit_quiet_median_ms} ms with no run in flight`;
    const share = () => `${Math.round(commits.dutyCycle * 100)} %`;
    const since = startedAt - 2 * health.checkMs;
    for (const [id, at] of this.#ranLately) if (at < since) this.#ranLately.delete(id);
    const recent = [...this.#ranLately.keys()];
    const dutyChanged = (level: 'info' | 'warn', how: string) => {
      commits.changed();
      this.#log[level](
        { ...fields, duty_cycle: commits.dutyCycle },
        `commit latency: ${said}: ${how} ${share()} of the time`,
      );
      this.#tell((observer) => observer.dutyCycle?.(commits.dutyCycle));
    };
    try {
      if (verdict === 'pressure') {
        const shed = (await Promise.all(recent.map((id) => shedLanes(this.#controlDb, id)))).filter((c) => c !== null);
        for (const change of shed) {
          commits.changed();
          this.#log.warn(
            { ...fields, migration: change.name, lanes_from: change.from, lanes_to: change.to },
            `commit latency: ${said}: ${change.name} sheds lanes ${change.from} → ${change.to}`,
          );
          this.#tell((observer) =>
            observer.lanes?.({ migration: change.name, direction: 'shed', from: change.from, to: change.to }),
          );
        }
        if (shed.length === 0 && commits.shrink()) dutyChanged('warn', 'lanes run');
        return;
      }
      if (commits.grow()) {
        dutyChanged('info', 'lanes run again');
        return;
      }
      for (const change of await Promise.all(recent.map((id) => growLanes(this.#controlDb, id)))) {
        if (change) {
          commits.changed();
          this.#log.info(
            { ...fields, migration: change.name, lanes_from: change.from, lanes_to: change.to },
            `commit latency: ${said}: ${change.name} grows lanes back ${change.from} → ${change.to}`,
          );
          this.#tell((observer) =>
            observer.lanes?.({ migration: change.name, direction: 'grown', from: change.from, to: change.to }),
          );
        }
      }
    } catch (error) {
      this.#log.warn({ err: error }, 'commit latency controller could not change lanes');
    }
  }

  /**
   * The latency controller (additive increase, multiplicative decrease): a job whose work took
   * `latencyFactor` times its norm per row halves the migration's lanes, for every worker; jobs
   * back within 1.25× give one lane back. At most one change per migration every `checkMs`, so a
   * change shows in the jobs before the next. Failing is logged, never fatal.
   */
  async #steerLanes(result: RunResult, latency: LatencyWatch, health: ResolvedHealth): Promise<void> {
    const { migration, job } = result;
    if (!migration || !job) return;
    const verdict = latency.observe(migration.id, { workMs: job.durationMs, rows: job.rows ?? job.batchSize });
    if (verdict !== 'pressure' && verdict !== 'healthy') return;
    const now = performance.now();
    if (now - (this.#lanesSteeredAt.get(migration.id) ?? -Infinity) < health.checkMs) return;
    // With foreground protection on, lanes grow only through the commit probes: a job's own
    // latency says nothing of what the migration does to the application's commits.
    if (verdict === 'healthy' && this.#commits) return;
    this.#lanesSteeredAt.set(migration.id, now);
    try {
      const change =
        verdict === 'pressure'
          ? await shedLanes(this.#controlDb, migration.id)
          : await growLanes(this.#controlDb, migration.id);
      if (!change) return;
      const event = {
        migration: change.name,
        direction: verdict === 'pressure' ? 'shed' : 'grown',
        from: change.from,
        to: change.to,
      } as const;
      const perRow = (ms: number | undefined) => (ms === undefined ? '?' : `${ms.toFixed(3)} ms`);
      if (event.direction === 'shed') {
        this.#log.warn(
          { ...migrationFields(migration), lanes_from: change.from, lanes_to: change.to },
          `latency: ${change.name} sheds lanes ${change.from} → ${change.to}: a job's work took ${perRow(job.durationMs / (job.rows ?? job.batchSize))} per row, ${perRow(latency.normMsPerRow(migration.id))} is its norm`,
        );
      } else {
        this.#log.info(
          { ...migrationFields(migration), lanes_from: change.from, lanes_to: change.to },
          `latency: ${change.name} grows lanes back ${change.from} → ${change.to}`,
        );
      }
      this.#tell((observer) => observer.lanes?.(event));
    } catch (error) {
      this.#log.warn({ err: error }, 'latency controller could not change lanes');
    }
  }

  /** A migration this worker started begins in one lane; the latency controller grows it from there. */
  async #slowStart(migration: { id: bigint; name: string }): Promise<void> {
    try {
      if (await startInOneLane(this.#controlDb, migration.id)) {
        this.#log.info(
          migrationFields(migration),
          `latency: ${migration.name} starts in one lane and grows while its jobs stay fast`,
        );
      }
    } catch (error) {
      this.#log.warn({ err: error }, 'latency controller could not start the migration in one lane');
    }
  }

  /**
   * Enqueues the passes of schedules that are due, one tick in flight for all lanes; true when it
   * enqueued any. Failing is logged, never fatal.
   */
  #schedule(): Promise<boolean> {
    this.#scheduling ??= this.#tickSchedules().finally(() => (this.#scheduling = undefined));
    return this.#scheduling;
  }

  async #tickSchedules(): Promise<boolean> {
    this.#scheduledAt = performance.now();
    try {
      const tick = await tickSchedules(this.#controlDb, this.#schedules, {
        retentionMs: this.options.passRetentionMs,
        log: this.#log,
      });
      return tick.enqueued.length > 0;
    } catch (error) {
      this.#log.error({ err: error }, 'scheduling passes failed');
      return false;
    }
  }

  #tell(call: (observer: WorkerObserver) => void): void {
    tellObservers(this.#observers, this.#log, call);
  }

  /** Records that this worker is alive. Failing to is logged, never fatal: it only feeds `bbm status`. */
  async #heartbeat(): Promise<void> {
    try {
      await announceWorker(this.#controlDb, {
        id: this.id,
        hostname: hostname(),
        pid: process.pid,
        workNames: this.#workNames,
      });
    } catch (error) {
      this.#log.warn({ err: error }, 'could not record worker heartbeat');
    }
  }

  #waitAfter(result: RunResult, backoff: Backoff): number {
    const { jitterRatio, pauseMs } = this.options;
    switch (result.outcome) {
      case 'job_succeeded':
        backoff.reset();
        // A range the work changed nothing in does not count toward the pace.
        return result.job?.rows === 0 ? 0 : pauseMs;
      case 'migration_started':
      case 'migration_finished':
      case 'migration_failed':
        backoff.reset();
        return pauseMs;
      // lock_in_use: every lane of every migration it may take is busy. Back off like an idle lane,
      // so that a fleet larger than the lanes it works does not poll the database (a sibling wakes
      // it when a migration changes).
      case 'lock_in_use':
      case 'job_failed':
      case 'no_job':
      case 'throttled':
      case 'aborted':
      case 'error':
        return jittered(backoff.next(), jitterRatio);
    }
  }

  #report(result: RunResult): void {
    const [level, message] = reportLine(result);
    // Built only when written: a job's fields cost its lane ~20 µs of client CPU (measured), and
    // the library's default logger (warn) writes no line for a job that succeeded.
    if (!this.#log.isLevelEnabled(level)) return;
    const fields = {
      [CORRELATION_ID]: result.runId,
      outcome: result.outcome,
      duration_ms: Math.round(result.durationMs * 10) / 10,
      ...(result.migration && migrationFields(result.migration)),
      ...(result.job && {
        ...jobFields(result.job),
        batch_size: result.job.batchSize,
        ...(result.job.split && { split: true }),
      }),
      ...(result.job?.rows !== undefined && { rows: result.job.rows }),
      ...(result.errorCode && { error_code: result.errorCode }),
      ...(result.heldForMs !== undefined && { held_for_ms: Math.round(result.heldForMs) }),
      ...(result.error && { err: result.error }),
    };
    this.#log[level](fields, message);
  }
}

/** The level and message of a run's log line. */
function reportLine(result: RunResult): ['debug' | 'info' | 'warn' | 'error', string] {
  switch (result.outcome) {
    case 'job_succeeded':
      return ['info', 'job finished'];
    case 'job_failed':
      return ['warn', 'job failed'];
    case 'migration_started':
      return ['info', 'migration started'];
    case 'migration_finished':
      return ['info', 'migration finished'];
    case 'migration_failed':
      return ['error', 'migration failed'];
    case 'aborted':
      return ['warn', 'run aborted and rolled back'];
    case 'throttled':
      return ['info', 'throttled: holding back'];
    case 'error':
      return [
        'error',
        result.heldForMs === undefined ? 'run failed' : 'run failed; its migration is set aside meanwhile',
      ];
    case 'no_job':
    case 'lock_in_use':
      return ['debug', 'nothing to do'];
  }
}

export function createWorker(params: WorkerParams): Worker {
  return new Worker(params);
}
