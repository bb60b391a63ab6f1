/**
 * Health holds: a worker reads signals from Postgres itself, at most every `checkMs` (one lane
 * for all), and sets aside the migrations a firing signal concerns until a time, with the reason,
 * on their rows (`on_hold_until`, `hold_reason`), where every worker's take skips them and
 * `bbm status` shows them. A hold lasts `holdMs` and is extended while its signal keeps firing,
 * so it ends by itself once the cause goes away. Anchors: GitLab Rails' health indicators
 * (autovacuum on the table, WAL queue), gh-ost's hibernation instead of failing.
 */
import {
  holdOverWalBudget,
  holdRunnable,
  holdVacuumingMigrations,
  migrationsBeingVacuumed,
  type VacuumHold,
  releaseHolds,
  type HoldSet,
} from '../store/migration-rows.ts';
import type pg from 'pg';
import {
  maxReplicaLagBytes,
  oldestTransaction,
  readyWalSegments,
  replicationSlots,
  type SlotWal,
} from '../store/health.ts';
import { workerNodeSignals, type NodeSignals } from '../store/citus-nodes.ts';
import { ConfigError } from './errors.ts';
import type { HealthOptions, HoldEvent, HoldKind } from './types.ts';

export type ResolvedHealth = Required<{
  [K in Exclude<keyof HealthOptions, 'autovacuum'>]: Exclude<HealthOptions[K], undefined>;
}> & { autovacuum: VacuumHold | false };

export const HEALTH_DEFAULTS: ResolvedHealth = {
  autovacuum: 'wraparound',
  maxTransactionAgeMs: 300_000,
  maxReplayLagBytes: 64 * 1024 * 1024,
  replayLagBytes: maxReplicaLagBytes,
  maxWalArchiveReady: 42,
  maxSlotRetainedBytes: 4 * 1024 ** 3,
  minSlotSafeWalBytes: 1024 ** 3,
  maxWalBytesPerSecond: null,
  latency: true,
  latencyFactor: 3,
  commitLatencyFactor: null,
  checkMs: 10_000,
  holdMs: 30_000,
};

/** The options, checked; null when health holds are off. */
export function resolveHealth(options: HealthOptions | false | undefined): ResolvedHealth | null {
  if (options === false) return null;
  const { autovacuum = HEALTH_DEFAULTS.autovacuum, ...rest } = options ?? {};
  if (!(typeof autovacuum === 'boolean' || autovacuum === 'wraparound' || autovacuum === 'all')) {
    throw new ConfigError(
      `health.autovacuum must be 'wraparound', 'all', true or false; got ${JSON.stringify(autovacuum)}`,
    );
  }
  const resolved: ResolvedHealth = {
    ...HEALTH_DEFAULTS,
    ...rest,
    autovacuum: autovacuum === true ? HEALTH_DEFAULTS.autovacuum : autovacuum,
  };
  for (const key of [
    'maxTransactionAgeMs',
    'maxReplayLagBytes',
    'maxWalArchiveReady',
    'maxSlotRetainedBytes',
    'minSlotSafeWalBytes',
    'maxWalBytesPerSecond',
  ] as const) {
    const value = resolved[key];
    if (value !== null && !(typeof value === 'number' && Number.isFinite(value) && value >= 0)) {
      throw new ConfigError(
        `health.${key} must be a number of at least 0, or null to turn it off; got ${JSON.stringify(value)}`,
      );
    }
  }
  for (const key of ['checkMs', 'holdMs'] as const) {
    const value = resolved[key];
    if (!(Number.isInteger(value) && value >= 1 && value <= 86_400_000)) {
      throw new ConfigError(`health.${key} must be an integer from 1 to 86400000; got ${JSON.stringify(value)}`);
    }
  }
  if (typeof resolved.replayLagBytes !== 'function') throw new ConfigError('health.replayLagBytes must be a function');
  if (typeof resolved.latency !== 'boolean') throw new ConfigError('health.latency must be true or false');
  if (!(typeof resolved.latencyFactor === 'number' && resolved.latencyFactor > 1)) {
    throw new ConfigError(
      `health.latencyFactor must be a number above 1; got ${JSON.stringify(resolved.latencyFactor)}`,
    );
  }
  const commitFactor = resolved.commitLatencyFactor;
  if (
    commitFactor !== null &&
    !(typeof commitFactor === 'number' && commitFactor > 1 && Number.isFinite(commitFactor))
  ) {
    throw new ConfigError(
      `health.commitLatencyFactor must be a number above 1, or null to turn it off; got ${JSON.stringify(commitFactor)}`,
    );
  }
  return resolved;
}

const MB = 1024 * 1024;
/** The WAL budget's averaging window. */
const WAL_WINDOW_MS = 10_000;
/** 0.3s, 12s, 300s. */
const seconds = (ms: number): string => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`;

/** What a health check did: holds set on migrations not held before, and migrations released. */
export interface HealthCheck {
  holds: HoldEvent[];
  released: string[];
  /** On a Citus coordinator, the worker nodes whose signals could not be read (`host:port`: why). */
  unreadNodes: string[];
}

/**
 * How each signal's reason starts (a LIKE pattern), so that the holds of a signal that stopped
 * firing can be found and lifted; run-error holds and WAL-budget holds (timed exactly) are left.
 */
const REASON_LIKE: Record<Exclude<HoldKind, 'wal_budget'>, string> = {
  transaction_age: 'a transaction open for %',
  replay_lag: 'a replica replays %',
  wal_archive: '% WAL segments wait for the archiver %',
  replication_slot: 'replication slot %',
  autovacuum: '%vacuum on %',
};

/**
 * Reads every signal once, sets the holds they call for and lifts those of signals that stopped
 * firing. New holds come back one event per signal, to be logged and counted once.
 */
export async function checkHealth(db: pg.Pool, health: ResolvedHealth): Promise<HealthCheck> {
  const anyServerWide = [
    health.maxTransactionAgeMs,
    health.maxReplayLagBytes,
    health.maxWalArchiveReady,
    health.maxSlotRetainedBytes,
    health.minSlotSafeWalBytes,
  ].some((limit) => limit !== null);
  const nodes = anyServerWide || health.autovacuum !== false ? await workerNodeSignals(db) : { read: [], unread: [] };
  const check: HealthCheck = {
    holds: [],
    released: [],
    unreadNodes: nodes.unread.map(({ node, error }) => `${node}: ${error}`),
  };
  /** The node whose signal is worst, the coordinator (the database itself) first: null for it. */
  const worstOf = <T>(here: T | null, of: (node: NodeSignals) => T | null, measure: (value: T) => number) => {
    let worst: { value: T; node: string | null } | null = here === null ? null : { value: here, node: null };
    for (const node of nodes.read) {
      const value = of(node);
      if (value !== null && (worst === null || measure(value) > measure(worst.value)))
        worst = { value, node: node.node };
    }
    return worst;
  };
  const onNode = (node: string | null) => (node === null ? '' : ` on node ${node}`);
  const hold = (kind: HoldKind, sets: HoldSet[]) => {
    const fresh = sets.filter((set) => set.fresh);
    for (const [reason, held] of groupBy(fresh)) {
      const until = new Date(Math.max(...held.map((set) => set.until.getTime())));
      check.holds.push({ kind, reason, migrations: held.map((set) => set.name), until });
    }
  };
  const serverWide = async (kind: Exclude<HoldKind, 'wal_budget' | 'autovacuum'>, reason: string | null) => {
    if (reason !== null) hold(kind, await holdRunnable(db, { holdMs: health.holdMs, reason }));
    else check.released.push(...(await releaseHolds(db, { reasonLike: REASON_LIKE[kind] })));
  };

  if (health.maxTransactionAgeMs !== null) {
    const oldest = worstOf(
      await oldestTransaction(db),
      (node) => node.oldestTransaction,
      (t) => t.ageMs,
    );
    await serverWide(
      'transaction_age',
      oldest && oldest.value.ageMs > health.maxTransactionAgeMs
        ? `a transaction open for ${seconds(oldest.value.ageMs)} (${oldest.value.pid === null ? 'prepared' : `pid ${oldest.value.pid}`})${onNode(oldest.node)} holds back vacuum (limit ${seconds(health.maxTransactionAgeMs)})`
        : null,
    );
  }
  if (health.maxReplayLagBytes !== null) {
    const lag = worstOf(
      await health.replayLagBytes(db),
      (node) => node.replicaLagBytes,
      (bytes) => bytes,
    );
    await serverWide(
      'replay_lag',
      lag !== null && lag.value > health.maxReplayLagBytes
        ? `a replica replays ${(lag.value / MB).toFixed(1)} MB behind${onNode(lag.node)} (limit ${(health.maxReplayLagBytes / MB).toFixed(1)} MB)`
        : null,
    );
  }
  if (health.maxWalArchiveReady !== null) {
    const ready = worstOf(
      await readyWalSegments(db),
      (node) => node.readyWal,
      (count) => count,
    );
    await serverWide(
      'wal_archive',
      ready !== null && ready.value > health.maxWalArchiveReady
        ? `${ready.value} WAL segments wait for the archiver${onNode(ready.node)} (limit ${health.maxWalArchiveReady})`
        : null,
    );
  }
  if (health.maxSlotRetainedBytes !== null || health.minSlotSafeWalBytes !== null) {
    const slots = [
      ...(await replicationSlots(db)),
      ...nodes.read.flatMap((node) =>
        node.slots.map((slot) => ({ ...slot, name: `${slot.name}${onNode(node.node)}` })),
      ),
    ];
    await serverWide('replication_slot', slotReason(slots, health));
  }
  if (health.autovacuum) {
    const onNodes = nodes.read.flatMap((node) => node.vacuums);
    hold('autovacuum', await holdVacuumingMigrations(db, { holdMs: health.holdMs, which: health.autovacuum, onNodes }));
    // Lifted once no vacuum of any kind runs on the table: a worker holding for fewer kinds of
    // vacuum than another must not lift the other's hold meanwhile.
    const keep = await migrationsBeingVacuumed(db, onNodes);
    check.released.push(...(await releaseHolds(db, { reasonLike: REASON_LIKE.autovacuum, keep })));
  }
  if (health.maxWalBytesPerSecond !== null) {
    hold(
      'wal_budget',
      await holdOverWalBudget(db, { bytesPerSecond: health.maxWalBytesPerSecond, windowMs: WAL_WINDOW_MS }),
    );
  }
  return check;
}

const GB = 1024 ** 3;
const size = (bytes: number) =>
  bytes >= GB
    ? `${(bytes / GB).toFixed(1)} GB`
    : bytes >= MB
      ? `${(bytes / MB).toFixed(1)} MB`
      : `${(bytes / 1024).toFixed(1)} kB`;

/** Why the slots hold every migration, or null: the slot that retains the most, else the one nearest invalidation. */
function slotReason(slots: SlotWal[], health: ResolvedHealth): string | null {
  const { maxSlotRetainedBytes: maxRetained, minSlotSafeWalBytes: minSafe } = health;
  const retaining = slots
    .filter((slot) => maxRetained !== null && slot.retainedBytes > maxRetained)
    .sort((a, b) => b.retainedBytes - a.retainedBytes)[0];
  if (retaining && maxRetained !== null) {
    return `replication slot ${retaining.name} (${retaining.type}) retains ${size(retaining.retainedBytes)} of WAL (limit ${size(maxRetained)})`;
  }
  const endangered = slots
    .filter((slot) => minSafe !== null && slot.safeWalBytes !== null && slot.safeWalBytes < minSafe)
    .sort((a, b) => (a.safeWalBytes ?? 0) - (b.safeWalBytes ?? 0))[0];
  if (endangered && minSafe !== null) {
    return `replication slot ${endangered.name} (${endangered.type}) can take ${size(Math.max(0, endangered.safeWalBytes ?? 0))} more WAL before max_slot_wal_keep_size invalidates it (limit ${size(minSafe)})`;
  }
  return null;
}

function groupBy(sets: HoldSet[]): Map<string, HoldSet[]> {
  const byReason = new Map<string, HoldSet[]>();
  for (const set of sets) byReason.set(set.reason, [...(byReason.get(set.reason) ?? []), set]);
  return byReason;
}
