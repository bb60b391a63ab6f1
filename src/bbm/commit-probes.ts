/**
 * Foreground protection. Each round (started by a health check, beside the lanes) times
 * COMMIT_PROBES commits on one connection: in a quiet round (when the watch asks for one), with
 * every run of the fleet held (whileRunsHeld), the baseline; otherwise beside the runs. Under
 * pressure, halves the lanes of the migrations this worker ran lately (for every worker, as the
 * latency controller does), and once they are down to one, the share of the time this worker's
 * lanes run (the duty cycle, set on the pacing); while healthy, grows that back first, then a
 * lane at a time. A step up that the verdicts after it find under pressure is undone, and its pace
 * held off for a while (pace.ts CommitWatch.steppedUp): it settles just below the knee. With it on, the latency controller only sheds lanes: they grow through the
 * probes. Changes are logged; failing is logged, never fatal.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { growLanes, shedLanes, type LanesChange } from '../store/migration-rows.ts';
import { probeCommit, recordDutyCycle, whileRunsHeld } from '../store/workers.ts';
import { sleep } from './backoff.ts';
import type { Logger } from './log.ts';
import type { Tell } from './observe.ts';
import type { PaceControls, RunFollower } from './pacer.ts';
import type { CommitVerdict, CommitWatch } from './pace.ts';
import type { RunResult } from './types.ts';

/** Commits timed per round. */
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

export interface CommitProbesContext {
  db: () => pg.Pool;
  workerId: string;
  /** Ends the spacing sleeps when the worker stops. */
  stopping: () => AbortSignal;
  /** Lanes are changed for the migrations this worker ran jobs of within two of these. */
  checkMs: number;
  pace: PaceControls;
  log: Logger;
  tell: Tell;
}

export class CommitProbes implements RunFollower {
  /** Migrations this worker ran jobs of, and when last. */
  readonly #ranLately = new Map<bigint, number>();
  #round: Promise<void> | undefined;

  constructor(
    private readonly commits: CommitWatch,
    private readonly ctx: CommitProbesContext,
  ) {}

  follow(result: RunResult): undefined {
    if (result.outcome === 'job_succeeded' && result.migration)
      this.#ranLately.set(result.migration.id, performance.now());
    return undefined;
  }

  /** Starts a round, unless one is in flight. */
  start(): void {
    this.#round ??= this.#probe().finally(() => (this.#round = undefined));
  }

  async settled(): Promise<void> {
    await this.#round;
  }

  async #probe(): Promise<void> {
    const { commits, ctx } = this;
    const quiet = commits.quietDue;
    const startedAt = performance.now();
    let latencies: number[] | undefined;
    try {
      latencies = await this.#time(quiet);
    } catch (error) {
      ctx.log.warn({ err: error }, 'commit latency probe failed; nothing changed');
      return;
    }
    if (!latencies) {
      ctx.log.debug(`commit latency: runs in flight did not end within ${QUIET_WAIT_MS} ms; no quiet round this time`);
      return;
    }
    if (quiet) {
      commits.observeQuiet(latencies);
      return;
    }
    const verdict = commits.observe(latencies);
    // A step up that this verdict finds under pressure is undone, and its pace held off (pace.ts judged).
    const failed = commits.judged(verdict.verdict);
    if (verdict.verdict !== 'pressure' && verdict.verdict !== 'healthy') return;
    const since = startedAt - 2 * ctx.checkMs;
    for (const [id, at] of this.#ranLately) if (at < since) this.#ranLately.delete(id);
    try {
      await this.#steer(verdict, failed, [...this.#ranLately.keys()]);
    } catch (error) {
      ctx.log.warn({ err: error }, 'commit latency controller could not change lanes');
    }
  }

  /** The round's latencies; undefined when a quiet round could not have quiet in time. */
  async #time(quiet: boolean): Promise<number[] | undefined> {
    const db = this.ctx.db();
    const client = await db.connect();
    // Quiet rounds too (see PROBE_SPACING_MS); a quiet round holds the fleet about 50 ms longer for it.
    const probe = async () => {
      const timed: number[] = [];
      for (let i = 0; i < COMMIT_PROBES; i += 1) {
        await sleep(Math.random() * 2 * PROBE_SPACING_MS, this.ctx.stopping());
        const started = performance.now();
        await probeCommit(client, this.ctx.workerId);
        timed.push(performance.now() - started);
      }
      return timed;
    };
    try {
      const latencies = quiet ? await whileRunsHeld(db, QUIET_WAIT_MS, probe) : await probe();
      client.release();
      return latencies;
    } catch (error) {
      client.release(error instanceof Error ? error : true);
      throw error;
    }
  }

  /**
   * Sheds or grows lanes, or the duty cycle, as the verdict calls for; `failed`, the step up it
   * found under pressure, is undone (a lane: the lanes before it, at the whole duty cycle they had).
   */
  async #steer(
    { verdict, medianMs, baselineMs }: CommitVerdict,
    failed: 'duty' | 'lanes' | undefined,
    recent: bigint[],
  ): Promise<void> {
    const { commits, ctx } = this;
    const fields = {
      commit_median_ms: Math.round(medianMs * 100) / 100,
      commit_quiet_median_ms: Math.round(baselineMs * 100) / 100,
    };
    const said = `commits take ${fields.commit_median_ms} ms (median), ${fields.commit_quiet_median_ms} ms with no run in flight`;
    const dutyChanged = async (level: 'info' | 'warn', how: string) => {
      commits.changed();
      ctx.pace.setDutyCycle(commits.dutyCycle);
      // For bbm status and the status page now, not at the next heartbeat (the heartbeat writes it too).
      await recordDutyCycle(ctx.db(), ctx.workerId, commits.dutyCycle).catch((error: unknown) =>
        ctx.log.warn({ err: error }, 'could not record the duty cycle'),
      );
      const share = `${Math.round(commits.dutyCycle * 100)} %`;
      ctx.log[level](
        { ...fields, duty_cycle: commits.dutyCycle },
        `commit latency: ${said}: ${how} ${share} of the time`,
      );
      ctx.tell((observer) => observer.dutyCycle?.(commits.dutyCycle));
    };
    const lanesChanged = (change: LanesChange, direction: 'shed' | 'grown') => {
      commits.changed();
      const how = direction === 'shed' ? 'sheds lanes' : 'grows lanes back';
      ctx.log[direction === 'shed' ? 'warn' : 'info'](
        { ...fields, migration: change.name, lanes_from: change.from, lanes_to: change.to },
        `commit latency: ${said}: ${change.name} ${how} ${change.from} → ${change.to}`,
      );
      ctx.tell((observer) => observer.lanes?.({ migration: change.name, direction, from: change.from, to: change.to }));
    };
    if (verdict === 'pressure') {
      if (failed === 'duty') {
        if (commits.stepDown()) await dutyChanged('warn', 'a step up was too far: lanes run');
        return;
      }
      const shed = (await Promise.all(recent.map((id) => shedLanes(ctx.db(), id, 'commit latency')))).filter(
        (c) => c !== null,
      );
      for (const change of shed) lanesChanged(change, 'shed');
      // After a lane too many, back to the lanes before it: the duty cycle was whole there.
      if (shed.length === 0 && failed !== 'lanes' && commits.shrink({ medianMs, baselineMs }))
        await dutyChanged('warn', 'lanes run');
      return;
    }
    if (commits.grow()) {
      commits.steppedUp('duty');
      await dutyChanged('info', 'lanes run again');
      return;
    }
    if (commits.dutyCycle < 1 || !commits.mayGrowLanes) return;
    let grown = false;
    for (const change of await Promise.all(recent.map((id) => growLanes(ctx.db(), id)))) {
      if (!change) continue;
      grown = true;
      lanesChanged(change, 'grown');
    }
    if (grown) {
      commits.steppedUp('lanes');
      ctx.pace.wakeLanes();
    }
  }
}
