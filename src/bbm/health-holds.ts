/**
 * The worker's health checks (health.ts, checkHealth): at most every `checkMs`, before a lane's
 * run, one check in flight that every lane finding it due waits for, so that holds are set before
 * the runs they concern. A new hold is logged once and told to observers (metrics); it is not an
 * error (no Sentry). A check that fails is logged, never fatal: the worker runs on without it.
 * Each check then starts a round of commit probes beside the lanes, when foreground protection
 * is on: before them, slow commits would hold every lane for ten of them.
 */
import type pg from 'pg';
import type { CommitProbes } from './commit-probes.ts';
import { checkHealth, type ResolvedHealth } from './health.ts';
import type { Logger } from './log.ts';
import type { Tell } from './observe.ts';
import type { Gate } from './pacer.ts';
import { Periodic } from './periodic.ts';

export class HealthHolds implements Gate {
  readonly step = 'a health check';
  readonly #checks: Periodic<boolean>;
  /** The Citus worker nodes the last check could not read, logged when that changes. */
  #unread = '';

  constructor(
    private readonly db: () => pg.Pool,
    private readonly health: ResolvedHealth,
    private readonly probes: CommitProbes | null,
    private readonly log: Logger,
    private readonly tell: Tell,
  ) {
    this.#checks = new Periodic(health.checkMs, () => this.#check(), 'end');
  }

  get due(): boolean {
    return this.#checks.due;
  }

  /** True when the check lifted holds: their migrations' lanes are free again. */
  run(): Promise<boolean> {
    return this.#checks.run();
  }

  /** Waits for the check in flight, and the probes it started. */
  async settled(): Promise<void> {
    await this.#checks.settled();
    await this.probes?.settled();
  }

  async #check(): Promise<boolean> {
    let lifted = false;
    try {
      const { holds, released, unreadNodes } = await checkHealth(this.db(), this.health);
      const unread = unreadNodes.join('; ');
      if (unread !== this.#unread) {
        if (unread) this.log.warn({ nodes: unreadNodes }, `health: Citus worker nodes not read: ${unread}`);
        else if (this.#unread) this.log.info('health: every Citus worker node read again');
        this.#unread = unread;
      }
      if (released.length > 0) this.log.info({ migrations: released }, `health hold lifted: ${released.join(', ')}`);
      lifted = released.length > 0;
      for (const event of holds) {
        this.log.warn(
          {
            hold: event.kind,
            hold_reason: event.reason,
            migrations: event.migrations,
            held_until: event.until.toISOString(),
          },
          `health hold: ${event.migrations.join(', ')} set aside: ${event.reason}`,
        );
        this.tell((observer) => observer.hold?.(event));
      }
    } catch (error) {
      this.log.warn({ err: error }, 'health check failed; holding nothing back this time');
    }
    this.probes?.start();
    return lifted;
  }
}
