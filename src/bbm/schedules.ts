/**
 * Recurring schedules: a sweep that runs every hour is a migration enqueued every hour. Each pass
 * is a migration named `<schedule>@<slot>`, where the slot is the scheduled time the pass stands
 * for (ISO 8601, UTC). Slots are computed the same way by every worker, and the name is unique,
 * so a pass can never be enqueued twice; one worker schedules at a time (an advisory lock), a
 * schedule gets no new pass while its last one is unfinished, and after downtime it gets one pass
 * for the current slot, not one per slot missed.
 */
import { CronExpressionParser } from 'cron-parser';
import type pg from 'pg';
import { migrationStatusName, statusIn, UNFINISHED_STATUSES } from '../store/codes.ts';
import type { Queryable } from '../store/db.ts';
import { isTarget, resolveTarget } from '../store/catalog.ts';
import { insertMigrationIfAbsent } from '../store/migration-rows.ts';
import { columnMax, latestPass, prunePasses, trySchedulerLock } from '../store/schedules.ts';
import { atomically } from '../store/tx.ts';
import { ConfigError } from './errors.ts';
import type { Logger } from './log.ts';
import { isValidWorkName, type WorkRegistry } from './work-registry.ts';
import type { Schedule } from './types.ts';

/** When a schedule's passes are due: the slot a time falls in, and the slot after a slot. */
export interface Cadence {
  slotAt(now: Date): Date;
  after(slot: Date): Date;
}

const UNITS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const SCHEDULE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}$/;

export function parseEvery(every: string): Cadence {
  const interval = /^(\d+)\s*(s|m|h|d)$/.exec(every.trim());
  if (interval) {
    const periodMs = Number(interval[1]) * UNITS[interval[2]!]!;
    if (!(periodMs >= 1_000)) throw new ConfigError(`every ${JSON.stringify(every)}: the period must be at least 1s`);
    return {
      slotAt: (now) => new Date(Math.floor(now.getTime() / periodMs) * periodMs),
      after: (slot) => new Date(slot.getTime() + periodMs),
    };
  }
  const fields = every.trim().split(/\s+/);
  if (fields.length !== 5)
    throw new ConfigError(
      `every ${JSON.stringify(every)} is neither a period (30s, 15m, 1h, 1d) nor a five-field cron expression`,
    );
  try {
    CronExpressionParser.parse(every, { tz: 'UTC' });
  } catch (cause) {
    throw new ConfigError(`every ${JSON.stringify(every)}: ${(cause as Error).message}`, { cause });
  }
  return {
    // The latest firing at or before now.
    slotAt: (now) =>
      CronExpressionParser.parse(every, { currentDate: new Date(now.getTime() + 1), tz: 'UTC' })
        .prev()
        .toDate(),
    after: (slot) => CronExpressionParser.parse(every, { currentDate: slot, tz: 'UTC' }).next().toDate(),
  };
}

export interface ResolvedSchedule extends Schedule, Cadence {}

/** Checks schedules once: names, cadences, and that this config registers their work functions. */
export function resolveSchedules(schedules: readonly Schedule[], registry: WorkRegistry): ResolvedSchedule[] {
  const seen = new Set<string>();
  return schedules.map((schedule, index) => {
    const where = `schedules[${index}]`;
    if (typeof schedule?.name !== 'string' || !SCHEDULE_NAME.test(schedule.name)) {
      throw new ConfigError(
        `${where}.name ${JSON.stringify(schedule?.name)} must be letters, digits and _ . : - (at most 100)`,
      );
    }
    if (seen.has(schedule.name)) throw new ConfigError(`schedule ${schedule.name} is defined twice`);
    seen.add(schedule.name);
    if (typeof schedule.work !== 'string' || !isValidWorkName(schedule.work) || !registry.get(schedule.work)) {
      throw new ConfigError(
        `schedule ${schedule.name}: work ${JSON.stringify(schedule.work)} is not a work function of this config`,
      );
    }
    for (const key of ['table', 'column'] as const) {
      if (typeof schedule[key] !== 'string' || schedule[key].trim() === '')
        throw new ConfigError(`schedule ${schedule.name}: ${key} is required`);
    }
    if (!Number.isInteger(schedule.batchSize) || schedule.batchSize <= 0) {
      throw new ConfigError(`schedule ${schedule.name}: batchSize must be a positive integer`);
    }
    return { ...schedule, ...parseEvery(String(schedule.every)) };
  });
}

/** The schedules whose passes are enqueued in `database` (all of them outside a fleet of several). */
export function schedulesIn<T extends Schedule>(schedules: readonly T[], database: string | undefined): T[] {
  return schedules.filter((s) => !s.databases || (database !== undefined && s.databases.includes(database)));
}

export const passName = (schedule: string, slot: Date): string => `${schedule}@${slot.toISOString()}`;

/** The slot a pass stands for, read back from its name. */
function slotOf(pass: string): Date | null {
  const at = pass.lastIndexOf('@');
  const slot = at < 0 ? NaN : Date.parse(pass.slice(at + 1));
  return Number.isNaN(slot) ? null : new Date(slot);
}

export interface SchedulerTick {
  /** Passes enqueued by this tick. */
  enqueued: string[];
  /** Old finished passes deleted. */
  pruned: number;
  /** False when another worker was scheduling. */
  scheduled: boolean;
}

/**
 * One scheduling round, in one transaction under the scheduler's lock: enqueue each schedule's
 * pass for the current slot when it is due, and prune finished passes past `retentionMs`.
 */
export async function tickSchedules(
  pool: pg.Pool,
  schedules: readonly ResolvedSchedule[],
  { retentionMs, now = new Date(), log }: { retentionMs: number; now?: Date; log?: Logger },
): Promise<SchedulerTick> {
  const tick: SchedulerTick = { enqueued: [], pruned: 0, scheduled: false };
  if (schedules.length === 0) return tick;
  await atomically(pool, async (client) => {
    tick.scheduled = await trySchedulerLock(client);
    if (!tick.scheduled) return;
    for (const schedule of schedules) {
      const slot = schedule.slotAt(now);
      const last = await latestPass(client, schedule.name);
      const lastSlot = last ? slotOf(last.name) : null;
      const due = !last || (!statusIn(UNFINISHED_STATUSES, last.status) && (lastSlot === null || lastSlot < slot));
      if (due) {
        const name = passName(schedule.name, slot);
        // A bad table or column is enqueued all the same: the worker fails the pass with its code.
        const target = await resolveTarget(client, schedule.table, schedule.column);
        // A key that is not a single integer column is bounded when its pass starts (min_key, max_key).
        const keyed = isTarget(target) && target.key !== null;
        const max = isTarget(target) && !keyed ? await columnMax(client, target) : null;
        const inserted = await insertMigrationIfAbsent(client, {
          name,
          jobSignatureName: schedule.work,
          tableName: schedule.table,
          columnName: schedule.column,
          batchSize: schedule.batchSize,
          ...(!keyed && {
            minValue: 1n,
            // An empty or all-negative column (or a bad target) still gets a valid [1, 1] pass.
            maxValue: max === null || max < 1n ? 1n : max,
          }),
        });
        if (inserted) tick.enqueued.push(name);
      }
      tick.pruned += await prunePasses(client, schedule.name, retentionMs);
    }
  });
  if (tick.enqueued.length > 0 || tick.pruned > 0)
    log?.info({ enqueued: tick.enqueued, pruned: tick.pruned }, 'scheduled passes');
  return tick;
}

export interface ScheduleReport {
  name: string;
  every: string;
  work: string;
  lastPass: { name: string; status: string; finishedAt: Date | null } | null;
  /** When the next pass is due; null while the last pass is unfinished (it waits for it). */
  nextDue: Date | null;
}

/** Each schedule with its newest pass and when its next pass is due. */
export async function scheduleReports(
  db: Queryable,
  schedules: readonly ResolvedSchedule[],
  now = new Date(),
): Promise<ScheduleReport[]> {
  const reports: ScheduleReport[] = [];
  for (const schedule of schedules) {
    const last = await latestPass(db, schedule.name);
    const lastSlot = last ? slotOf(last.name) : null;
    const nextDue =
      !last || lastSlot === null
        ? schedule.slotAt(now)
        : statusIn(UNFINISHED_STATUSES, last.status)
          ? null
          : schedule.after(lastSlot);
    reports.push({
      name: schedule.name,
      every: schedule.every,
      work: schedule.work,
      lastPass: last
        ? { name: last.name, status: migrationStatusName(last.status), finishedAt: last.finishedAt }
        : null,
      nextDue,
    });
  }
  return reports;
}
