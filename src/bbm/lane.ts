/**
 * One lane of a worker: a loop of runs on its own connection (run.ts), until stopped, or with
 * `untilDone` until it finds nothing to run. Before each run it asks the pacing (pacer.ts) what
 * to wait for; after it, how long to sleep. It tells the lane-stall watch what it waits for.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { sleep } from './backoff.ts';
import type { LaneSteps } from './lane-watch.ts';
import type { LanePacing, Release } from './pacer.ts';
import type { LaneShare } from './shared-lanes.ts';
import type { Runner } from './run.ts';
import type { RunResult } from './types.ts';

export interface LaneContext {
  pace: LanePacing;
  steps: LaneSteps;
  stopping: AbortSignal;
  untilDone: boolean;
  /** Runs once, reported and told. */
  run(runner: Runner, chain: boolean): Promise<RunResult>;
  /** Reports and tells a result the lane made without a run (throttled). */
  reported(result: RunResult): void;
  /** Tells observers the lane sleeps. */
  sleeping(ms: number): void;
  /** Tells observers how long the lane waited for a lane of the process. */
  waitedForShare(ms: number): void;
  /** The process's lanes, when it serves several databases: one is held for each run. */
  share?: LaneShare | undefined;
}

export async function laneLoop(lane: number, runner: Runner, ctx: LaneContext): Promise<void> {
  const { pace, steps, stopping, share } = ctx;
  const backoff = pace.backoff();
  let shared = false;
  const giveBack = () => {
    if (shared) share?.give();
    shared = false;
  };
  try {
    while (!stopping.aborted) {
      // With no pause between jobs, each successful run also begins the next (one round trip less).
      // A lane of the process is held through a run (and the run it begins ahead), never through
      // a controller's wait, a rest or a sleep: every wait ends the run begun ahead and gives it back.
      const release = async () => {
        await runner.release();
        giveBack();
      };
      // Another database waits for a lane: this one gives its lane back after the run, begun nothing.
      const chain = pace.chain && !share?.othersWait;
      await pace.ready(lane, backoff, release);
      if (pace.restMs() > 0) {
        // Foreground protection: every lane of the worker rests (or one lane would take the job
        // another rests after), with nothing begun (a run begun ahead holds its lane and the quiet lock).
        steps.step(lane, 'sleep');
        await release();
        await sleep(pace.restMs(), stopping);
        continue;
      }
      steps.step(lane, 'a run');
      let result = await throttled(ctx, release);
      if (!result) {
        if (share && !shared) {
          // The database must answer first: one that fell silent holds its own lane for the
          // connect timeout, not one of the process's that another database could use.
          await runner.connect();
          steps.step(lane, 'a lane of the process');
          const waitFrom = performance.now();
          shared = await share.take(stopping);
          const waitedMs = performance.now() - waitFrom;
          if (waitedMs >= 1) ctx.waitedForShare(waitedMs);
          // Granted just as the worker stopped: no new run.
          if (!shared || stopping.aborted) break;
        }
        result = await ctx.run(runner, chain);
      }
      if (ctx.untilDone && result.outcome === 'no_job') {
        // Done, not stuck: the watch must not report a lane that left while the others still work.
        steps.step(lane, 'sleep');
        pace.wakeLanes();
        break;
      }
      const waitMs = await pace.afterRun(lane, result, backoff, release);
      // A lane keeps its share only to go on with the run it began ahead, and only while no other
      // database waits: a transaction is never left open while it waits for a lane.
      if (shared && (waitMs > 0 || !runner.begunAhead || share?.othersWait)) await release();
      if (waitMs > 0) {
        steps.step(lane, 'sleep');
        ctx.sleeping(waitMs);
        await sleep(waitMs, AbortSignal.any([stopping, pace.wake]));
      }
    }
  } finally {
    giveBack();
  }
}

/** A `throttled` result while the throttle holds back (ending any run begun ahead), else undefined. */
async function throttled(ctx: LaneContext, release: Release): Promise<RunResult | undefined> {
  const reason = await ctx.pace.throttled(release);
  if (!reason) return undefined;
  await release();
  const result: RunResult = { outcome: 'throttled', runId: randomUUID(), error: new Error(reason), durationMs: 0 };
  ctx.reported(result);
  return result;
}
