/**
 * The latency controller (additive increase, multiplicative decrease), following the lanes' runs:
 * a job whose work took `latencyFactor` times its norm per row (LatencyWatch, pace.ts) halves the
 * migration's lanes, for every worker; jobs back within 1.25× give one lane back. At most one
 * change per migration every `checkMs`, so a change shows in the jobs before the next. A
 * migration this worker started begins in one lane (slow start) and grows from there. The lane
 * whose run it follows waits for the change. Failing is logged, never fatal.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { growLanes, shedLanes, startInOneLane } from '../store/migration-rows.ts';
import { migrationFields, type Logger } from './log.ts';
import type { Tell } from './observe.ts';
import type { RunFollower } from './pacer.ts';
import type { LatencyWatch } from './pace.ts';
import type { RunResult } from './types.ts';

export interface LatencyLanesContext {
  db: () => pg.Pool;
  checkMs: number;
  /** With foreground protection on, lanes grow only through the commit probes. */
  growsThroughProbes: boolean;
  log: Logger;
  tell: Tell;
}

export class LatencyLanes implements RunFollower {
  /** When each migration's lanes were last shed or grown. */
  readonly #steeredAt = new Map<bigint, number>();

  constructor(
    private readonly latency: LatencyWatch,
    private readonly ctx: LatencyLanesContext,
  ) {}

  follow(result: RunResult): { step: string; run: () => Promise<void> } | undefined {
    const { migration } = result;
    if (result.outcome === 'job_succeeded') return { step: 'lane steering', run: () => this.#steer(result) };
    if (result.outcome === 'migration_started' && migration)
      return { step: 'slow start', run: () => this.#slowStart(migration) };
    return undefined;
  }

  async #steer(result: RunResult): Promise<void> {
    const { migration, job } = result;
    if (!migration || !job) return;
    const { latency, ctx } = this;
    const verdict = latency.observe(migration.id, { workMs: job.durationMs, rows: job.rows ?? job.batchSize });
    if (verdict !== 'pressure' && verdict !== 'healthy') return;
    const now = performance.now();
    if (now - (this.#steeredAt.get(migration.id) ?? -Infinity) < ctx.checkMs) return;
    // A job's own latency says nothing of what the migration does to the application's commits.
    if (verdict === 'healthy' && ctx.growsThroughProbes) return;
    this.#steeredAt.set(migration.id, now);
    try {
      const change =
        verdict === 'pressure' ? await shedLanes(ctx.db(), migration.id) : await growLanes(ctx.db(), migration.id);
      if (!change) return;
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
