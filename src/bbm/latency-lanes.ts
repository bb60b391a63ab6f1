/**
 * The latency controller (additive increase, multiplicative decrease), following the lanes' runs:
 * a job whose work took `latencyFactor` times its norm per row (LatencyWatch, pace.ts) halves the
 * migration's lanes, for every worker, at most once every `checkMs`; GROW_AFTER_HEALTHY_JOBS jobs
 * within 1.25× of it give one lane back. Lanes grow on the jobs' evidence, not on the clock, so a
 * migration of a few seconds uses its lanes (a lane per `checkMs` took 30 s to reach four). Only
 * jobs begun after the last change count, so a change shows in the jobs before the next. A
 * migration this worker started begins in one lane (slow start) and grows from there. The lane
 * whose run it follows waits for the change. Failing is logged, never fatal.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { growLanes, shedLanes, startInOneLane } from '../store/migration-rows.ts';
import { GROW_AFTER_HEALTHY_JOBS } from '../store/locks.ts';
import { migrationFields, type Logger } from './log.ts';
import type { Tell } from './observe.ts';
import type { PaceControls, RunFollower } from './pacer.ts';
import type { LatencyWatch } from './pace.ts';
import type { RunResult } from './types.ts';

export interface LatencyLanesContext {
  db: () => pg.Pool;
  checkMs: number;
  /** With foreground protection on, lanes grow only through the commit probes. */
  growsThroughProbes: boolean;
  pace: PaceControls;
  log: Logger;
  tell: Tell;
}

/** What the controller remembers of a migration. */
interface Steering {
  /** When its lanes were last shed or grown by this worker: jobs begun before say nothing of them. */
  changedAt: number;
  /** When they were last shed: one shed every `checkMs` at most. */
  shedAt: number;
  /** Healthy jobs since the last change (or the last pressure). */
  healthy: number;
  /** Until when growing is not tried again: it found the lanes at their most. */
  fullUntil: number;
}

export class LatencyLanes implements RunFollower {
  readonly #steering = new Map<bigint, Steering>();

  constructor(
    private readonly latency: LatencyWatch,
    private readonly ctx: LatencyLanesContext,
  ) {}

  /**
   * A step only when the lanes change: the lane waits for it (on the controllers' pool) with its
   * run begun ahead released, so the decision itself is made here, without the database.
   */
  follow(result: RunResult): { step: string; run: () => Promise<void> } | undefined {
    const { migration } = result;
    if (result.outcome === 'migration_started' && migration)
      return { step: 'slow start', run: () => this.#slowStart(migration) };
    if (result.outcome !== 'job_succeeded') return undefined;
    const verdict = this.#verdict(result);
    return verdict && { step: 'lane steering', run: () => this.#steer(result, verdict) };
  }

  /** Whether this job calls for shedding or growing the migration's lanes now. */
  #verdict(result: RunResult): 'pressure' | 'healthy' | undefined {
    const { migration, job } = result;
    if (!migration || !job) return undefined;
    const { latency, ctx } = this;
    const verdict = latency.observe(migration.id, { workMs: job.durationMs, rows: job.rows ?? job.batchSize });
    if (verdict !== 'pressure' && verdict !== 'healthy') return undefined;
    // A job's own latency says nothing of what the migration does to the application's commits.
    if (verdict === 'healthy' && ctx.growsThroughProbes) return undefined;
    const now = performance.now();
    let steering = this.#steering.get(migration.id);
    if (!steering) {
      steering = { changedAt: -Infinity, shedAt: -Infinity, healthy: 0, fullUntil: -Infinity };
      this.#steering.set(migration.id, steering);
    }
    // A job begun before the last change ran beside the lanes before it.
    if (now - result.durationMs < steering.changedAt) return undefined;
    if (verdict === 'pressure') {
      steering.healthy = 0;
      if (now - steering.shedAt < ctx.checkMs) return undefined;
      steering.shedAt = now;
    } else {
      steering.healthy += 1;
      if (steering.healthy < GROW_AFTER_HEALTHY_JOBS || now < steering.fullUntil) return undefined;
      steering.healthy = 0;
    }
    return verdict;
  }

  async #steer(result: RunResult, verdict: 'pressure' | 'healthy'): Promise<void> {
    const { migration, job } = result;
    if (!migration || !job) return;
    const { latency, ctx } = this;
    const steering = this.#steering.get(migration.id)!;
    try {
      const change =
        verdict === 'pressure'
          ? await shedLanes(ctx.db(), migration.id, 'latency')
          : await growLanes(ctx.db(), migration.id);
      if (!change) {
        // At its most lanes (or its row changed): ask again a check later, not after every job.
        if (verdict === 'healthy') steering.fullUntil = performance.now() + ctx.checkMs;
        return;
      }
      steering.changedAt = performance.now();
      // Below its most lanes again: growing may be tried as soon as the jobs allow.
      if (verdict === 'pressure') steering.fullUntil = -Infinity;
      const direction = verdict === 'pressure' ? 'shed' : 'grown';
      const fields = { ...migrationFields(migration), lanes_from: change.from, lanes_to: change.to };
      if (direction === 'shed') {
        const perRow = (ms: number | undefined) => (ms === undefined ? '?' : `${ms.toFixed(3)} ms`);
        ctx.log.warn(
          fields,
          `latency: ${change.name} sheds lanes ${change.from} → ${change.to}: a job's work took ${perRow(job.durationMs / (job.rows ?? job.batchSize))} per row, ${perRow(latency.normMsPerRow(migration.id))} is its norm`,
        );
      } else {
        ctx.log.info(fields, `latency: ${change.name} grows lanes back ${change.from} → ${change.to}`);
        ctx.pace.wakeLanes();
      }
      ctx.tell((observer) => observer.lanes?.({ migration: change.name, direction, from: change.from, to: change.to }));
    } catch (error) {
      ctx.log.warn({ err: error }, 'latency controller could not change lanes');
    }
  }

  /** A migration this worker started begins in one lane; the controller grows it from there. */
  async #slowStart(migration: { id: bigint; name: string }): Promise<void> {
    try {
      if (await startInOneLane(this.ctx.db(), migration.id)) {
        this.ctx.log.info(
          migrationFields(migration),
          `latency: ${migration.name} starts in one lane and grows while its jobs stay fast`,
        );
      }
    } catch (error) {
      this.ctx.log.warn({ err: error }, 'latency controller could not start the migration in one lane');
    }
  }
}
