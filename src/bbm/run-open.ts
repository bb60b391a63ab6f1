/**
 * How a runner opens its runs: a pooled connection and the prologue that begins each run
 * (runPrologue), with the server-side backstops a margin past the run timeout, and the session's
 * own limits where they are tighter (read once, on the first run; retried after a failure).
 */
import type pg from 'pg';
import {
  RunTransaction,
  runPrologue,
  sessionLimits,
  tighterLimit,
  type RunPrologue,
} from '../store/run-transaction.ts';
import { VALID_WORK_NAME } from './work-registry.ts';

/** How far past the run timeout the server-side backstops (statement and idle timeouts) sit. */
export const BACKSTOP_MARGIN_MS = 10_000;

export class RunOpener {
  readonly backstopMs: number;
  /** Starts every run: BEGIN, settings, take, savepoint (see run-transaction.ts). */
  #prologue: RunPrologue;
  #limits: Promise<void> | undefined;

  constructor(
    private readonly pool: pg.Pool,
    private readonly names: readonly string[],
    runTimeoutMs: number,
    private readonly only: bigint | undefined,
    /** Told the statement timeout a cut of its own gets: the backstop, or the session's own when tighter. */
    private readonly onCutTimeout: (ms: number) => void,
  ) {
    this.backstopMs = runTimeoutMs + BACKSTOP_MARGIN_MS;
    this.#prologue = runPrologue({ names, validNamePattern: VALID_WORK_NAME }, this.backstopMs, only);
  }

  /** A connection for a new run (begun by RunTransaction.begin). */
  async open(): Promise<RunTransaction> {
    await (this.#limits ??= this.#readLimits());
    return RunTransaction.open(this.pool, this.#prologue);
  }

  async #readLimits(): Promise<void> {
    try {
      const limits = await sessionLimits(this.pool);
      const filter = { names: this.names, validNamePattern: VALID_WORK_NAME };
      this.#prologue = runPrologue(filter, this.backstopMs, this.only, limits);
      this.onCutTimeout(tighterLimit(limits.statementTimeoutMs, this.backstopMs));
    } catch (error) {
      this.#limits = undefined;
      throw error;
    }
  }
}
