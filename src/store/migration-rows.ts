/**
 * Statements on `batched_background_migrations`: its state transitions, and what operators
 * read and steer. (Taking a migration's next job is bbm_take_job, through run-transaction.ts.)
 */
import { sql, type SQL } from 'drizzle-orm';
import pg from 'pg';
import { exec, execOne, integerLiteral, type Queryable } from './db.ts';
import { atomically } from './tx.ts';
import { storableMessage } from './messages.ts';
import {
  ErrorCode,
  JobStatus,
  KEY_ORDINAL_END,
  MAX_LANES,
  MigrationStatus,
  DELETABLE_STATUSES,
  RUNNABLE_STATUSES,
  statusCodes,
  type ErrorCodeNumber,
  type MigrationStatusCode,
} from './codes.ts';
import type { Target } from './catalog.ts';
import { canonicalKey, keyRow, keyTextArray, type Key } from './keys.ts';
import { keyEnds, lastValue, shardRowEstimate } from './target-reads.ts';
import type { StoredMigration } from './rows.ts';
import { LANE_LOCK_BASE } from './locks.ts';
import { SIGNAL_SQL } from './health.ts';

const RUNNABLE = sql.raw(statusCodes(RUNNABLE_STATUSES));

const { escapeLiteral } = pg;
const bigOrNull = (value: string | null): bigint | null => (value === null ? null : BigInt(value));

export function quotedTable(target: Target): SQL {
  return sql`${sql.identifier(target.schema)}.${sql.identifier(target.table)}`;
}

/**
 * The planner's estimate of a table's rows (reltuples), summed over its partitions for a
 * partitioned table (whose own figure autovacuum never sets); NULL while none of them has been
 * analyzed or vacuumed.
 */
export function estimatedRows(tableOid: SQL): SQL {
  return sql`(SELECT CASE WHEN c.relkind = 'p'
                          THEN (SELECT sum(nullif(l.reltuples, -1))
                                FROM pg_catalog.pg_partition_tree(c.oid) t JOIN pg_catalog.pg_class l ON l.oid = t.relid
                                WHERE t.isleaf)
                          ELSE nullif(c.reltuples, -1) END::bigint
              FROM pg_catalog.pg_class c WHERE c.oid = ${tableOid})`;
}

/**
 * active -> running. A NULL max_value becomes the column's current maximum (an index lookup);
 * on an empty range it becomes min_value, leaving one empty range to run. The status guard keeps
 * a pause that an operator committed meanwhile.
 *
 * The table's maximum is read first, in a statement of its own (target-reads.ts: Citus refuses
 * the read inside this UPDATE), and the UPDATE takes it as a constant. greatest(min_value, the
 * table's maximum) is the maximum at or above min_value, or min_value when none is. Two lanes
 * that start the migration at once are safe as they were with the read inside: the second UPDATE
 * waits for the first's row lock, and then coalesce(max_value, …) sees the max_value the first
 * committed, so that once set, max_value never changes under the ranges cut against it.
 */
export async function startMigration(db: Queryable, id: bigint, target: Target): Promise<bigint | null> {
  if (target.key) return startKeyMigration(db, id, target.key, target);
  const last = await lastValue(db, target);
  const row = await execOne<{ max_value: string }>(
    db,
    sql`
      UPDATE batched_background_migrations
      SET status = ${MigrationStatus.running},
          started_at = coalesce(started_at, now()),
          updated_at = now(),
          max_value = coalesce(max_value, greatest(min_value, ${last}::bigint)),
          total_tuple_count = coalesce(total_tuple_count,
            ${estimatedRows(sql`${target.oid}::oid`)})
      WHERE id = ${id} AND status IN (${RUNNABLE})
      RETURNING max_value`,
  );
  return row ? BigInt(row.max_value) : null;
}

/**
 * active -> running, for a key that is not a single integer column (docs/keys.md): min_key and
 * max_key given as a lone value become one-value arrays; a NULL min_key becomes the key's first
 * value, a NULL max_key its last (index lookups, read first in statements of their own, as for
 * startMigration); bounds around no row become the given bound alone (min_key and max_key given
 * the wrong way round are refused: keyBoundsProblem); max_value becomes KEY_ORDINAL_END, the end
 * of the ranges' order (codes.ts). An empty table leaves both NULL: one empty range.
 */
async function startKeyMigration(db: Queryable, id: bigint, key: Key, target: Target): Promise<bigint | null> {
  const reversed = `(${keyRow(key, 'bounds.hi')}) < (${keyRow(key, 'bounds.lo')})`;
  const shardRows = await shardRowEstimate(db, target);
  const row = await execOne<{ max_value: string }>(
    db,
    sql`
      WITH ${await keyBounds(db, target, key, id)}
      UPDATE batched_background_migrations
      SET status = ${MigrationStatus.running},
          started_at = coalesce(started_at, now()),
          updated_at = now(),
          -- Bounds around no row (a min_key after the last key, a max_key before the first): one range
          -- of the given bound alone, which holds no row.
          min_key = CASE WHEN NOT bounds.lo_given AND ${sql.raw(reversed)} THEN bounds.hi ELSE bounds.lo END,
          max_key = CASE WHEN bounds.lo_given AND ${sql.raw(reversed)} THEN bounds.lo ELSE bounds.hi END,
          max_value = ${KEY_ORDINAL_END}::bigint,
          total_tuple_count = coalesce(total_tuple_count, ${shardRows}::bigint,
            ${estimatedRows(sql`${target.oid}::oid`)})
      FROM bounds
      WHERE id = ${id} AND status IN (${RUNNABLE})
      RETURNING max_value`,
  );
  return row ? BigInt(row.max_value) : null;
}

/**
 * A key migration's bounds, as the CTEs `given` and `bounds(lo, hi, lo_given)` (lo, hi: JSON
 * arrays of key values): min_key and max_key as given (a lone value as a one-value array), else
 * the table's first and last keys, read first in statements of their own (target-reads.ts). What
 * the start step sets and what a rehearsal samples from.
 */
export async function keyBounds(db: Queryable, target: Target, key: Key, id: bigint): Promise<SQL> {
  const ends = await keyEnds(db, target, key);
  return sql`given AS (
        SELECT ${sql.raw(canonicalKey(key, 'min_key'))} AS lo, ${sql.raw(canonicalKey(key, 'max_key'))} AS hi
        FROM batched_background_migrations WHERE id = ${id}
      ), bounds AS (
        SELECT given.lo IS NOT NULL AS lo_given, coalesce(given.lo, ${ends.first}::jsonb) AS lo,
               coalesce(given.hi, ${ends.last}::jsonb) AS hi
        FROM given
      )`;
}

/**
 * running -> finished, unless a range is still active or failed (a lane may have split one
 * meanwhile). `swept`: the work has a check, and every finished range must have passed the final
 * sweep (store/verify.ts); the migration is then marked verified.
 */
export async function finishMigration(db: Queryable, id: bigint, { swept }: { swept: boolean }): Promise<boolean> {
  const rows = await exec(
    db,
    sql`
      UPDATE batched_background_migrations
      SET status = ${MigrationStatus.finished}, finished_at = now(), updated_at = now(),
          failure_error_code = NULL, failure_message = NULL,
          verified_at = CASE WHEN ${swept} THEN now() END
      WHERE id = ${id} AND status IN (${RUNNABLE})
        AND NOT EXISTS (SELECT 1 FROM batched_background_migration_jobs j
                        WHERE j.batched_background_migration_id = ${id}
                          AND (j.status IN (${JobStatus.active}, ${JobStatus.failed})
                               OR (${swept} AND j.status = ${JobStatus.finished} AND j.verified_at IS NULL)))
      RETURNING id`,
  );
  return rows.length > 0;
}

export async function failMigration(db: Queryable, id: bigint, code: ErrorCodeNumber, message: string): Promise<void> {
  await exec(
    db,
    sql`
      UPDATE batched_background_migrations
      SET status = ${MigrationStatus.failed}, failure_error_code = ${code}, failure_message = ${storableMessage(message)},
          finished_at = now(), updated_at = now()
      WHERE id = ${id} AND status IN (${RUNNABLE})`,
  );
}

/** What holdAfterRunError did to the migration. */
export type RunErrorHold = { failed: true } | { failed: false; heldForMs: number } | null;

/**
 * Counts a run error against the migration: it is set aside (`on_hold_until`, `hold_reason` =
 * `reason`) for `holdMs` × 2^(errors so far), at most `maxHoldMs`, so that other migrations run
 * meanwhile; the `maxErrors`-th error in a row fails it with run_error and `failureMessage`. Null
 * when it is no longer runnable.
 */
export async function holdAfterRunError(
  db: Queryable,
  id: bigint,
  {
    reason,
    failureMessage,
    holdMs,
    maxHoldMs,
    maxErrors,
  }: { reason: string; failureMessage: string; holdMs: number; maxHoldMs: number; maxErrors: number },
): Promise<RunErrorHold> {
  const row = await execOne<{ failed: boolean; held_ms: number | null }>(
    db,
    sql`
      WITH counted AS (
        SELECT id, run_errors + 1 AS errors,
               least(${maxHoldMs}::float8, ${holdMs}::float8 * power(2, least(run_errors, 30))) AS held_ms
        FROM batched_background_migrations WHERE id = ${id} AND status IN (${RUNNABLE})
        FOR UPDATE
      )
      UPDATE batched_background_migrations m
      SET run_errors = c.errors,
          on_hold_until = CASE WHEN c.errors >= ${maxErrors}::int THEN NULL ELSE now() + c.held_ms * interval '1 millisecond' END,
          hold_reason = CASE WHEN c.errors >= ${maxErrors}::int THEN NULL ELSE ${storableMessage(reason)} END,
          status = CASE WHEN c.errors >= ${maxErrors}::int THEN ${MigrationStatus.failed} ELSE m.status END,
          failure_error_code = CASE WHEN c.errors >= ${maxErrors}::int THEN ${ErrorCode.run_error} ELSE m.failure_error_code END,
          failure_message = CASE WHEN c.errors >= ${maxErrors}::int THEN ${storableMessage(failureMessage)} ELSE m.failure_message END,
          finished_at = CASE WHEN c.errors >= ${maxErrors}::int THEN now() ELSE m.finished_at END,
          updated_at = now()
      FROM counted c WHERE m.id = c.id
      RETURNING c.errors >= ${maxErrors}::int AS failed, c.held_ms AS held_ms`,
  );
  if (!row) return null;
  return row.failed ? { failed: true } : { failed: false, heldForMs: row.held_ms ?? 0 };
}

/** A health hold set on a migration: its name, why, and whether it was not held before (log it once). */
export interface HoldSet {
  name: string;
  reason: string;
  fresh: boolean;
  until: Date;
}

/**
 * Holds every runnable migration until now + `holdMs`, for a signal about the whole server (a
 * long-open transaction, replica lag, the WAL archiver).
 */
export async function holdRunnable(
  db: Queryable,
  { holdMs, reason }: { holdMs: number; reason: string },
): Promise<HoldSet[]> {
  return setHolds(
    db,
    sql`SELECT id, ${storableMessage(reason)}::text AS reason, ${holdMs}::float8 AS hold_ms
        FROM batched_background_migrations WHERE status IN (${RUNNABLE})`,
  );
}

/**
 * Sets the holds `candidates` call for: a query of (id, reason, hold_ms) rows, one per runnable
 * migration to hold. Each is held until now + hold_ms with its reason; a hold only ever moves
 * later, and `fresh` marks migrations that were not held before (whichever worker set it).
 */
async function setHolds(db: Queryable, candidates: SQL): Promise<HoldSet[]> {
  return exec<HoldSet>(
    db,
    sql`
      WITH candidate AS (${candidates}), target AS (
        SELECT m.id, m.on_hold_until AS before, c.reason, c.hold_ms
        FROM batched_background_migrations m JOIN candidate c ON c.id = m.id
        WHERE m.status IN (${RUNNABLE})
          AND (m.on_hold_until IS NULL OR m.on_hold_until < now() + c.hold_ms * interval '1 millisecond')
        FOR UPDATE OF m
      )
      UPDATE batched_background_migrations m
      SET on_hold_until = now() + t.hold_ms * interval '1 millisecond', hold_reason = t.reason, updated_at = now()
      FROM target t WHERE m.id = t.id
      RETURNING m.name, t.reason, (t.before IS NULL OR t.before <= now()) AS fresh, m.on_hold_until AS until`,
  );
}

/**
 * Which vacuums hold a migration on their table: `'wraparound'` those that must not be slowed,
 * an autovacuum to prevent wraparound (it cannot be cancelled, and the table's xids age until it
 * ends) and a manual VACUUM (an operator's); `'all'` every vacuum, routine autovacuum included,
 * which a long migration starts on its own table with its dead rows.
 */
export type VacuumHold = 'wraparound' | 'all';

/** A vacuum running on a worker node of a Citus cluster (SIGNAL_SQL.vacuums there). */
export interface NodeVacuum {
  /** `host:port` */
  node: string;
  schema: string;
  relname: string;
  kind: 'vacuum' | 'anti-wraparound autovacuum' | 'autovacuum';
}

/**
 * The runnable migrations whose table a vacuum runs on now, (id, reason): here, or on a Citus
 * worker node (`onNodes`) on one of the table's shards ("… on public.items_102008 on node
 * 10.0.0.5:5432"); only those of `which` unless it is `'all'`. One row a migration (its first
 * vacuum by reason).
 */
function vacuumedMigrations(which: VacuumHold, onNodes: NodeVacuum[]): SQL {
  const here = sql`
    SELECT m.id, pg_catalog.format('%s on %I.%I', v.kind, v.schema, v.relname) AS reason
    FROM batched_background_migrations m
    JOIN (${sql.raw(SIGNAL_SQL.vacuums)}) v ON v.relid = bbm_try_regclass(m.table_name)
    WHERE m.status IN (${RUNNABLE}) ${which === 'all' ? sql`` : sql`AND v.kind <> 'autovacuum'`}`;
  const shards = onNodes.filter((vacuum) => which === 'all' || vacuum.kind !== 'autovacuum');
  // pg_dist_shard is read only when a node vacuums: it exists only with Citus. A shard is named
  // by shard_name() as its table is, schema-qualified outside public.
  const onShards = sql`
    SELECT m.id, pg_catalog.format('%s on %I.%I on node %s', v.kind, v.schema, v.relname, v.node)
    FROM batched_background_migrations m
    JOIN pg_dist_shard s ON s.logicalrelid = bbm_try_regclass(m.table_name)
    JOIN pg_catalog.json_to_recordset(${JSON.stringify(shards)}::json) AS v(node text, schema text, relname text, kind text)
      ON pg_catalog.shard_name(s.logicalrelid, s.shardid)
         = CASE WHEN v.schema = 'public' THEN pg_catalog.quote_ident(v.relname)
                ELSE pg_catalog.format('%I.%I', v.schema, v.relname) END
    WHERE m.status IN (${RUNNABLE})`;
  return sql`SELECT DISTINCT ON (id) id, reason FROM (${here}${shards.length > 0 ? sql` UNION ALL ${onShards}` : sql``}) c ORDER BY id, reason`;
}

/**
 * Holds each runnable migration whose table a holding vacuum (`which`) runs on now, until now +
 * `holdMs`, with the reason "anti-wraparound autovacuum on public.items": the migration's writes
 * and the vacuum compete for the same table, and the vacuum should win. On a Citus coordinator,
 * `onNodes` are the worker nodes' vacuums: one of a shard of the table holds it too.
 */
export async function holdVacuumingMigrations(
  db: Queryable,
  { holdMs, which, onNodes }: { holdMs: number; which: VacuumHold; onNodes: NodeVacuum[] },
): Promise<HoldSet[]> {
  return setHolds(
    db,
    sql`SELECT id, reason, ${holdMs}::float8 AS hold_ms FROM (${vacuumedMigrations(which, onNodes)}) v`,
  );
}

/**
 * The names of the runnable migrations whose table any vacuum runs on now (here, or on a shard on
 * `onNodes`): a vacuum hold of theirs stays, whatever kind of vacuum each worker holds for (so a
 * worker that holds for wraparound only never lifts the hold of one that holds for every vacuum).
 */
export async function migrationsBeingVacuumed(db: Queryable, onNodes: NodeVacuum[]): Promise<string[]> {
  const rows = await exec<{ name: string }>(
    db,
    sql`SELECT m.name FROM batched_background_migrations m JOIN (${vacuumedMigrations('all', onNodes)}) v ON v.id = m.id`,
  );
  return rows.map((row) => row.name);
}

/**
 * Why a migration is allowed fewer lanes than max_parallel_jobs (lanes_reason): slow start, the
 * latency controller's shed (its jobs' time per row past their norm), or foreground protection's
 * (the application's commits slower than with no run in flight).
 */
export type LanesReason = 'slow start' | 'latency' | 'commit latency';

/** A change of the lanes a migration is allowed: from and to (null: all of max_parallel_jobs). */
export interface LanesChange {
  name: string;
  from: number;
  to: number;
}

/**
 * Halves the lanes a runnable migration is allowed (at least 1): the latency controller's
 * multiplicative decrease, for `reason`. Null when it already runs in one lane, or is not runnable.
 */
export async function shedLanes(
  db: Queryable,
  id: bigint,
  reason: Exclude<LanesReason, 'slow start'>,
): Promise<LanesChange | null> {
  const row = await execOne<LanesChange>(
    db,
    sql`
      WITH before AS (
        SELECT id, coalesce(lanes_allowed, max_parallel_jobs) AS lanes FROM batched_background_migrations
        WHERE id = ${id} AND status IN (${RUNNABLE}) AND coalesce(lanes_allowed, max_parallel_jobs) > 1
        FOR UPDATE
      )
      UPDATE batched_background_migrations m SET lanes_allowed = greatest(1, b.lanes / 2), lanes_reason = ${reason}, updated_at = now()
      FROM before b WHERE m.id = b.id
      RETURNING m.name, b.lanes AS "from", m.lanes_allowed AS "to"`,
  );
  return row ?? null;
}

/**
 * Slow start: a migration with several lanes starts in one (lanes_allowed = 1), so that the
 * latency controller learns its norm before concurrency, and grows lanes while jobs stay within
 * it. True when it did (not when lanes_allowed was already set, or there is one lane).
 */
export async function startInOneLane(db: Queryable, id: bigint): Promise<boolean> {
  const rows = await exec(
    db,
    sql`UPDATE batched_background_migrations SET lanes_allowed = 1, lanes_reason = ${'slow start' satisfies LanesReason}, updated_at = now()
        WHERE id = ${id} AND status IN (${RUNNABLE}) AND max_parallel_jobs > 1 AND lanes_allowed IS NULL RETURNING id`,
  );
  return rows.length > 0;
}

/**
 * Allows a runnable migration one lane more, back to all of max_parallel_jobs (NULL, and its
 * reason with it): the latency controller's additive increase. Null when nothing was held back.
 */
export async function growLanes(db: Queryable, id: bigint): Promise<LanesChange | null> {
  const row = await execOne<{ name: string; from: number; to: number | null; max: number }>(
    db,
    sql`
      WITH before AS (
        SELECT id, lanes_allowed AS lanes, max_parallel_jobs AS max FROM batched_background_migrations
        WHERE id = ${id} AND status IN (${RUNNABLE}) AND lanes_allowed IS NOT NULL
        FOR UPDATE
      )
      UPDATE batched_background_migrations m
      SET lanes_allowed = CASE WHEN b.lanes + 1 >= b.max THEN NULL ELSE b.lanes + 1 END,
          lanes_reason = CASE WHEN b.lanes + 1 >= b.max THEN NULL ELSE m.lanes_reason END, updated_at = now()
      FROM before b WHERE m.id = b.id
      RETURNING m.name, b.lanes AS "from", m.lanes_allowed AS "to", b.max AS max`,
  );
  return row ? { name: row.name, from: row.from, to: row.to ?? row.max } : null;
}

/**
 * The WAL budget: holds each runnable migration whose finished jobs wrote more than
 * `bytesPerSecond` of WAL on average over the last `windowMs`, for as long as that average needs
 * to fall back to the budget (the window's share past the budget, if its WAL was spread evenly).
 */
export async function holdOverWalBudget(
  db: Queryable,
  { bytesPerSecond, windowMs }: { bytesPerSecond: number; windowMs: number },
): Promise<HoldSet[]> {
  return setHolds(
    db,
    sql`
      SELECT s.id,
             format('WAL budget: %s kB/s over the last %ss (limit %s kB/s)',
                    round((s.bytes / (${windowMs}::float8 / 1000) / 1000)::numeric, 1),
                    round(${windowMs}::numeric / 1000), round((${bytesPerSecond}::float8 / 1000)::numeric, 1)) AS reason,
             ${windowMs}::float8 * (1 - ${bytesPerSecond}::float8 * ${windowMs}::float8 / 1000 / s.bytes) AS hold_ms
      FROM (
        SELECT j.batched_background_migration_id AS id, sum(j.wal_bytes)::float8 AS bytes
        FROM batched_background_migration_jobs j
        WHERE j.finished_at > now() - ${windowMs}::float8 * interval '1 millisecond' AND j.wal_bytes IS NOT NULL
        GROUP BY 1
      ) s
      WHERE s.bytes / (${windowMs}::float8 / 1000) > ${bytesPerSecond}::float8`,
  );
}

/**
 * Lifts the holds of a signal that no longer fires (their reason matches `reasonLike`, a LIKE
 * pattern), so a migration resumes at the next check after its cause went away rather than when
 * its hold runs out; those named in `keep` stay.
 * Returns the names released.
 */
export async function releaseHolds(
  db: Queryable,
  { reasonLike, keep = [] }: { reasonLike: string; keep?: string[] },
): Promise<string[]> {
  const rows = await exec<{ name: string }>(
    db,
    sql`
      UPDATE batched_background_migrations m SET on_hold_until = NULL, hold_reason = NULL, updated_at = now()
      WHERE m.status IN (${RUNNABLE}) AND m.on_hold_until > now() AND m.hold_reason LIKE ${reasonLike}
        AND m.name <> ALL (${sql.param(keep)}::text[])
      RETURNING m.name`,
  );
  return rows.map((row) => row.name);
}

/** How many migrations are held now (a gauge). */
export async function countHeldMigrations(db: Queryable): Promise<number> {
  const row = await execOne<{ n: number }>(
    db,
    sql`SELECT count(*)::int AS n FROM batched_background_migrations WHERE status IN (${RUNNABLE}) AND on_hold_until > now()`,
  );
  return row?.n ?? 0;
}

/** running/active -> paused. Returns the names changed. */
export async function pauseMigrations(db: Queryable, name?: string): Promise<string[]> {
  const rows = await exec<{ name: string }>(
    db,
    sql`
      UPDATE batched_background_migrations SET status = ${MigrationStatus.paused}, updated_at = now()
      WHERE status IN (${RUNNABLE}) ${name === undefined ? sql`` : sql`AND name = ${name}`}
      RETURNING name`,
  );
  return rows.map((r) => r.name);
}

/** paused -> active (a worker makes it running again). Returns the names changed. */
export async function resumeMigrations(db: Queryable, name?: string): Promise<string[]> {
  const rows = await exec<{ name: string }>(
    db,
    sql`
      UPDATE batched_background_migrations SET status = ${MigrationStatus.active}, updated_at = now()
      WHERE status = ${MigrationStatus.paused} ${name === undefined ? sql`` : sql`AND name = ${name}`}
      RETURNING name`,
  );
  return rows.map((r) => r.name);
}

const DELETABLE = sql.raw(statusCodes(DELETABLE_STATUSES));

export type DeleteResult = { deleted: true; jobs: number } | { deleted: false; status: MigrationStatusCode | null };

/**
 * Deletes a paused, failed or finished migration with its jobs, atomically; refuses an active or
 * running one (status returned; null when no migration has the name). The jobs go first: a job
 * still finishing in a lane (paused after it was taken) holds its row, and the delete waits for it
 * rather than locking the migration row the finishing job updates (which would deadlock).
 */
export async function deleteMigration(db: pg.Pool | pg.ClientBase, name: string): Promise<DeleteResult> {
  let refusal: DeleteResult | undefined;
  try {
    return await atomically(db, async (client): Promise<DeleteResult> => {
      const found = await execOne<{ id: string; status: MigrationStatusCode }>(
        client,
        sql`SELECT id, status FROM batched_background_migrations WHERE name = ${name}`,
      );
      if (!found) return { deleted: false, status: null };
      const jobs = await exec(
        client,
        sql`DELETE FROM batched_background_migration_jobs
            WHERE batched_background_migration_id = ${found.id}::bigint
              AND EXISTS (SELECT 1 FROM batched_background_migrations WHERE id = ${found.id}::bigint AND status IN (${DELETABLE}))
            RETURNING id`,
      );
      const deleted = await execOne(
        client,
        sql`DELETE FROM batched_background_migrations WHERE id = ${found.id}::bigint AND status IN (${DELETABLE}) RETURNING id`,
      );
      if (deleted) return { deleted: true, jobs: jobs.length };
      // Not deletable (now): throw, so that any job rows deleted above are rolled back.
      const now = await execOne<{ status: MigrationStatusCode }>(
        client,
        sql`SELECT status FROM batched_background_migrations WHERE id = ${found.id}::bigint`,
      );
      refusal = { deleted: false, status: now?.status ?? null };
      throw new Error('not deletable');
    });
  } catch (error) {
    if (refusal) return refusal;
    throw error;
  }
}

/** How many migrations are in each status. */
export async function countMigrationsByStatus(db: Queryable): Promise<Map<MigrationStatusCode, number>> {
  const rows = await exec<{ status: number; count: string }>(
    db,
    sql`SELECT status, count(*) AS count FROM batched_background_migrations GROUP BY status`,
  );
  return new Map(rows.map((r) => [r.status as MigrationStatusCode, Number(r.count)]));
}

/**
 * One migration with its job counts, as `bbm status` shows it: its row (StoredMigration), with
 * `batchSize` the size ranges are cut with now (the adaptive size, when `targetJobMs` is set) and
 * `lanesAllowed` the lanes the latency controller allows now (max_parallel_jobs unless it shed
 * some), and what is counted from its jobs and lanes. For a key migration (`key` set), `minValue`
 * and `maxValue` are the row's as stored: the order of its ranges, not keys (see `key`).
 */
export type MigrationSummary = Pick<
  StoredMigration,
  | 'id'
  | 'name'
  | 'jobSignatureName'
  | 'tableName'
  | 'columnName'
  | 'minValue'
  | 'maxValue'
  | 'batchSize'
  | 'maxParallelJobs'
  | 'targetJobMs'
  | 'minBatchSize'
  | 'maxBatchSize'
  | 'onHoldUntil'
  | 'holdReason'
  | 'runErrors'
  | 'failureErrorCode'
  | 'failureMessage'
  | 'createdAt'
  | 'startedAt'
  | 'finishedAt'
> & {
  status: MigrationStatusCode;
  lanesAllowed: number;
  /**
   * Why `lanesAllowed` is below max_parallel_jobs (LanesReason); null when it is not, or when a
   * worker of a release before the reason was recorded lowered it.
   */
  lanesReason: LanesReason | null;
  /** Ranges cut: finished, failed (waiting for a retry), active (running in a lane, or cut ahead for one). */
  jobs: { total: number; finished: number; failed: number; active: number };
  /** Lanes whose lock is held now: jobs running at this moment, across all workers. */
  lanesInUse: number;
  /**
   * Sum of the widths of finished ranges: an integer key's progress is this over the width of
   * [min, max]. For a key migration (`key`), a sum of ordinals that means nothing.
   */
  finishedWidth: bigint;
  /**
   * The end of the contiguous finished prefix: every id up to it is in a finished range, and a
   * resume starts after it. Null before the first range; may be min_value - 1. Null for a key
   * migration, whose finished prefix is `key.finishedPrefix`.
   */
  finishedPrefixEnd: bigint | null;
  /**
   * Jobs finished in the last RECENT_WINDOW: their count, summed width and rows, and the seconds
   * they span. Rows are the ranges' sizes; for a key migration, what the work reported, else the
   * size (as `key.finishedRows` counts them, so that its rate and its rows left agree).
   */
  recent: { jobs: number; width: bigint; rows: number; seconds: number };
  /** The failure message of the job that failed last, if any job is failed now. */
  lastJobError: string | null;
  /** A migration over a key that is not a single integer column (docs/operating.md, "Progress for keys"); null for an integer key. */
  key: KeySummary | null;
  /** The final sweep of a work with a check (docs/verify.md); null when none has checked a range of it. */
  verification: VerificationSummary | null;
  /**
   * The last rehearsal's report (the `rehearsal` column, docs/rehearse.md) without its samples,
   * their count as `sampleCount`; null when it was never rehearsed.
   */
  rehearsal: Record<string, unknown> | null;
};

/** What the final sweep has done: ranges checked so far, rows it found failing and fixed, and when it finished. */
export interface VerificationSummary {
  rangesVerified: number;
  rowsFound: number;
  rangesRerun: number;
  /** When every range had passed (the migration then finished); null while sweeping. */
  verifiedAt: Date | null;
}

/**
 * A key migration's bounds and progress, in keys and rows: its min_value and max_value (and its
 * ranges') hold only the order of its ranges, ordinals (KEY_ORDINAL_END) that say nothing of how
 * far it has come. Each key is its values in column order, each as the exact text of its JSON
 * form (a uuid, a numeric to its last digit, a timestamp in ISO form).
 */
export interface KeySummary {
  /** The first and last keys: given at enqueue or found at the start; null until then, and for an empty table. */
  min: string[] | null;
  max: string[] | null;
  /**
   * The last key of the contiguous finished prefix: every key up to it is in a finished range
   * (the last key of the last finished range before the first unfinished one, in range order).
   * Null until the first range finishes.
   */
  finishedPrefix: string[] | null;
  /** Rows of the finished ranges: what each range's work reported (row_count), else the size it was cut with. */
  finishedRows: number;
  /**
   * The table's rows, estimated: total_tuple_count (pg_class.reltuples when the migration
   * started), else reltuples now. Null while the table has never been analyzed or vacuumed.
   */
  estimatedRows: number | null;
}

/** How far back `recent` looks: the rate a migration has now, not its average since it started. */
const RECENT_WINDOW_SECONDS = 300;

interface SummaryRow {
  id: string;
  name: string;
  status: number;
  job_signature_name: string;
  table_name: string;
  column_name: string;
  min_value: string;
  max_value: string | null;
  batch_size: number;
  max_parallel_jobs: number;
  lanes_allowed: number;
  lanes_reason: LanesReason | null;
  target_job_ms: number | null;
  min_batch_size: number | null;
  max_batch_size: number | null;
  on_hold_until: Date | null;
  hold_reason: string | null;
  run_errors: number;
  failure_error_code: number | null;
  failure_message: string | null;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
  jobs_total: string;
  jobs_finished: string;
  jobs_failed: string;
  jobs_active: string;
  lanes_in_use: string;
  finished_width: string;
  finished_prefix_end: string | null;
  recent_jobs: string;
  recent_width: string;
  recent_rows: string;
  recent_seconds: number | null;
  last_job_error: string | null;
  is_key: boolean;
  min_key_values: string[] | null;
  max_key_values: string[] | null;
  finished_prefix_key: string[] | null;
  finished_key_rows: string;
  recent_key_rows: string;
  estimated_rows: string | null;
  jobs_verified: string;
  verified_at: Date | null;
  verify_rows_found: string;
  verify_ranges_rerun: number;
  rehearsal: Record<string, unknown> | null;
}

const RECENT = sql.raw(`interval '${RECENT_WINDOW_SECONDS} seconds'`);

/**
 * Whether a migration's row is a key migration's: its keys are set (given, or found at the
 * start), or its max_value is the end of the ranges' order (an empty table). Before it starts,
 * one without given keys cannot be told from an integer migration without the catalog; it has
 * no progress either way.
 */
const IS_KEY_MIGRATION = sql`(m.min_key IS NOT NULL OR m.max_key IS NOT NULL OR m.max_value = ${KEY_ORDINAL_END}::bigint)`;

/** A key range's rows: what its work reported, else the size it was cut with; none in the one range of an empty key space. */
const KEY_JOB_ROWS = sql`coalesce(j.row_count, CASE WHEN j.max_key IS NULL THEN 0 END, j.batch_size, m.batch_size)`;

const keyValues = (json: string): SQL => sql.raw(keyTextArray(json));

/** Migrations (all, the one named, or those in `statuses`), oldest first, with their job counts. */
export async function listMigrations(
  db: Queryable,
  { name, statuses }: { name?: string | undefined; statuses?: readonly MigrationStatusCode[] } = {},
): Promise<MigrationSummary[]> {
  const filters: SQL[] = [];
  if (name !== undefined) filters.push(sql`m.name = ${name}`);
  if (statuses !== undefined) filters.push(sql`m.status = ANY(${sql.param(statuses)}::smallint[])`);
  const rows = await exec<SummaryRow>(
    db,
    sql`
      WITH s AS (
      SELECT m.id, m.name, m.status, m.job_signature_name, m.table_name, m.column_name, m.min_value, m.max_value,
             m.batch_size, m.max_parallel_jobs, least(m.max_parallel_jobs, coalesce(m.lanes_allowed, m.max_parallel_jobs)) AS lanes_allowed,
             CASE WHEN m.lanes_allowed < m.max_parallel_jobs THEN m.lanes_reason END AS lanes_reason,
             m.target_job_ms, m.min_batch_size, m.max_batch_size,
             CASE WHEN m.on_hold_until > now() THEN m.on_hold_until END AS on_hold_until,
             CASE WHEN m.on_hold_until > now() THEN m.hold_reason END AS hold_reason, m.run_errors,
             m.failure_error_code, m.failure_message, m.created_at, m.started_at, m.finished_at,
             count(j.id) AS jobs_total,
             count(j.id) FILTER (WHERE j.status = ${JobStatus.finished}) AS jobs_finished,
             count(j.id) FILTER (WHERE j.status = ${JobStatus.failed}) AS jobs_failed,
             count(j.id) FILTER (WHERE j.status = ${JobStatus.active}) AS jobs_active,
             count(j.id) FILTER (WHERE j.verified_at IS NOT NULL) AS jobs_verified,
             m.verified_at, m.verify_rows_found, m.verify_ranges_rerun,
             -- The report without its samples (up to 1,000 of them): the page and bbm status show the projection.
             CASE WHEN jsonb_typeof(m.rehearsal) = 'object' THEN (m.rehearsal - 'samples') || jsonb_build_object(
               'sampleCount', CASE WHEN jsonb_typeof(m.rehearsal->'samples') = 'array' THEN jsonb_array_length(m.rehearsal->'samples') END)
             END AS rehearsal,
             (SELECT count(*) FROM pg_catalog.pg_locks l
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
                AND l.classid::bigint >= ${LANE_LOCK_BASE} AND l.classid::bigint < ${LANE_LOCK_BASE + MAX_LANES}
                AND l.objid::bigint = m.id % 2147483648) AS lanes_in_use,
             -- numeric: widths and their sums can pass 2^63 on a bigint column's whole domain
             coalesce(sum(j.max_value::numeric - j.min_value + 1) FILTER (WHERE j.status = ${JobStatus.finished}), 0) AS finished_width,
             CASE WHEN count(j.id) = 0 THEN NULL
                  ELSE coalesce(min(j.min_value::numeric) FILTER (WHERE j.status <> ${JobStatus.finished}) - 1, max(j.max_value)) END
               AS finished_prefix_end,
             count(j.id) FILTER (WHERE j.status = ${JobStatus.finished} AND j.finished_at > now() - ${RECENT}) AS recent_jobs,
             coalesce(sum(j.max_value::numeric - j.min_value + 1) FILTER (WHERE j.status = ${JobStatus.finished} AND j.finished_at > now() - ${RECENT}), 0) AS recent_width,
             coalesce(sum(coalesce(j.batch_size, m.batch_size)) FILTER (WHERE j.status = ${JobStatus.finished} AND j.finished_at > now() - ${RECENT}), 0) AS recent_rows,
             extract(epoch FROM max(j.finished_at) FILTER (WHERE j.status = ${JobStatus.finished} AND j.finished_at > now() - ${RECENT})
                              - min(j.started_at) FILTER (WHERE j.status = ${JobStatus.finished} AND j.finished_at > now() - ${RECENT}))::float8 AS recent_seconds,
             (SELECT f.failure_message FROM batched_background_migration_jobs f
              WHERE f.batched_background_migration_id = m.id AND f.status = ${JobStatus.failed}
              ORDER BY f.updated_at DESC LIMIT 1) AS last_job_error,
             ${IS_KEY_MIGRATION} AS is_key, m.min_key, m.max_key, m.total_tuple_count,
             coalesce(sum(${KEY_JOB_ROWS}) FILTER (WHERE j.status = ${JobStatus.finished}), 0) AS finished_key_rows,
             coalesce(sum(${KEY_JOB_ROWS}) FILTER (WHERE j.status = ${JobStatus.finished} AND j.finished_at > now() - ${RECENT}), 0) AS recent_key_rows
      FROM batched_background_migrations m
      LEFT JOIN batched_background_migration_jobs j ON j.batched_background_migration_id = m.id
      ${filters.length === 0 ? sql`` : sql`WHERE ${sql.join(filters, sql` AND `)}`}
      GROUP BY m.id
      )
      SELECT s.*,
             CASE WHEN s.is_key THEN ${keyValues('s.min_key')} END AS min_key_values,
             CASE WHEN s.is_key THEN ${keyValues('s.max_key')} END AS max_key_values,
             -- Ranges tile the order of ranges without gaps: the range that ends where the prefix
             -- ends is the last one finished before the first unfinished one.
             CASE WHEN s.is_key THEN (
               SELECT ${keyValues('p.max_key')} FROM batched_background_migration_jobs p
               WHERE p.batched_background_migration_id = s.id AND p.status = ${JobStatus.finished}
                 AND p.max_value = s.finished_prefix_end) END AS finished_prefix_key,
             CASE WHEN s.is_key THEN coalesce(s.total_tuple_count, ${estimatedRows(sql`bbm_try_regclass(s.table_name)`)}) END
               AS estimated_rows
      FROM s
      ORDER BY s.id`,
  );
  return rows.map((r) => ({
    id: BigInt(r.id),
    name: r.name,
    status: r.status as MigrationStatusCode,
    jobSignatureName: r.job_signature_name,
    tableName: r.table_name,
    columnName: r.column_name,
    minValue: BigInt(r.min_value),
    maxValue: bigOrNull(r.max_value),
    batchSize: r.batch_size,
    maxParallelJobs: r.max_parallel_jobs,
    lanesAllowed: r.lanes_allowed,
    lanesReason: r.lanes_reason,
    targetJobMs: r.target_job_ms,
    minBatchSize: r.min_batch_size,
    maxBatchSize: r.max_batch_size,
    onHoldUntil: r.on_hold_until,
    holdReason: r.hold_reason,
    runErrors: r.run_errors,
    failureErrorCode: r.failure_error_code,
    failureMessage: r.failure_message,
    createdAt: r.created_at,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    jobs: {
      total: Number(r.jobs_total),
      finished: Number(r.jobs_finished),
      failed: Number(r.jobs_failed),
      active: Number(r.jobs_active),
    },
    lanesInUse: Number(r.lanes_in_use),
    finishedWidth: BigInt(r.finished_width),
    finishedPrefixEnd: r.is_key ? null : bigOrNull(r.finished_prefix_end),
    recent: {
      jobs: Number(r.recent_jobs),
      width: BigInt(r.recent_width),
      rows: Number(r.is_key ? r.recent_key_rows : r.recent_rows),
      seconds: r.recent_seconds ?? 0,
    },
    lastJobError: r.last_job_error,
    key: r.is_key ? keySummaryOf(r) : null,
    verification:
      r.verified_at === null && Number(r.jobs_verified) === 0
        ? null
        : {
            rangesVerified: Number(r.jobs_verified),
            rowsFound: Number(r.verify_rows_found),
            rangesRerun: r.verify_ranges_rerun,
            verifiedAt: r.verified_at,
          },
    rehearsal: r.rehearsal,
  }));
}

function keySummaryOf(r: SummaryRow): KeySummary {
  return {
    min: r.min_key_values,
    max: r.max_key_values,
    finishedPrefix: r.finished_prefix_key,
    finishedRows: Number(r.finished_key_rows),
    estimatedRows: r.estimated_rows === null ? null : Number(r.estimated_rows),
  };
}

export interface NewMigration {
  name: string;
  jobSignatureName: string;
  tableName: string;
  /** A column's name, or several joined by commas (a key of several columns). */
  columnName: string;
  batchSize: number;
  minValue?: bigint | undefined;
  maxValue?: bigint | null | undefined;
  /** min_key, max_key: JSON text the caller checked (a value, or an array of one value per key column). */
  minKey?: string | undefined;
  maxKey?: string | undefined;
  /** job_arguments: JSON text of an object, checked by the caller. Default `{}`. */
  jobArguments?: string | undefined;
  paused?: boolean | undefined;
  /** Enqueued awaiting approval: no worker takes it until `bbm approve`. */
  awaitingApproval?: boolean | undefined;
  /** Pace; see MigrationPace. */
  maxParallelJobs?: number | undefined;
  targetJobMs?: number | null | undefined;
  minBatchSize?: number | null | undefined;
  maxBatchSize?: number | null | undefined;
}

/**
 * The INSERT of a migration as plain SQL text, values inlined as literals: what `enqueueMigration`
 * runs, and what `enqueueMigrationSql` hands to a schema-migration tool (drizzle-kit, knex,
 * node-pg-migrate), so both write the same row. Text goes through pg's escapeLiteral (an E''
 * literal when it holds a backslash, so it means the same whatever standard_conforming_strings);
 * numbers are integers the caller checked; JSON is text the caller checked, as a `'…'::jsonb`
 * literal. Columns left at their defaults are not written.
 */
export function insertMigrationText(m: NewMigration, { ifAbsent = false } = {}): string {
  const columns: [string, string][] = [
    ['name', escapeLiteral(m.name)],
    ['job_signature_name', escapeLiteral(m.jobSignatureName)],
    ['table_name', escapeLiteral(m.tableName)],
    ['column_name', escapeLiteral(m.columnName)],
    ['batch_size', integerLiteral(m.batchSize)],
  ];
  const optional: [string, bigint | number | null | undefined][] = [
    ['min_value', m.minValue],
    ['max_value', m.maxValue],
    ['max_parallel_jobs', m.maxParallelJobs],
    ['target_job_ms', m.targetJobMs],
    ['min_batch_size', m.minBatchSize],
    ['max_batch_size', m.maxBatchSize],
  ];
  for (const [column, value] of optional)
    if (value !== undefined && value !== null) columns.push([column, integerLiteral(value)]);
  const json: [string, string | undefined][] = [
    ['min_key', m.minKey],
    ['max_key', m.maxKey],
    ['job_arguments', m.jobArguments],
  ];
  for (const [column, text] of json) if (text !== undefined) columns.push([column, `${escapeLiteral(text)}::jsonb`]);
  if (m.paused) columns.push(['status', `${MigrationStatus.paused} /* paused */`]);
  else if (m.awaitingApproval) columns.push(['status', `${MigrationStatus.awaiting_approval} /* awaiting_approval */`]);
  return [
    `INSERT INTO batched_background_migrations (${columns.map(([column]) => column).join(', ')})`,
    `VALUES (${columns.map(([, value]) => value).join(', ')})`,
    ...(ifAbsent ? ['ON CONFLICT (name) DO NOTHING'] : []),
    'RETURNING id;',
  ].join('\n');
}

/** Inserts a migration unless one of that name exists (a schedule's pass); true when it did. */
export async function insertMigrationIfAbsent(db: Queryable, m: NewMigration): Promise<boolean> {
  const { rows } = await db.query<{ id: string }>(insertMigrationText(m, { ifAbsent: true }));
  return rows.length > 0;
}

/** Inserts a migration (what `bbm enqueue` does after checking it); returns its id. */
export async function insertMigration(db: Queryable, m: NewMigration): Promise<bigint> {
  const { rows } = await db.query<{ id: string }>(insertMigrationText(m));
  if (!rows[0]) throw new Error('INSERT ... RETURNING returned no row');
  return BigInt(rows[0].id);
}

/**
 * How fast a migration goes, changeable while it runs: each field given is set (null clears the
 * adaptive fields), the rest kept. Lanes and batch size take effect at the next take and cut.
 */
export interface MigrationPace {
  maxParallelJobs?: number | undefined;
  batchSize?: number | undefined;
  targetJobMs?: number | null | undefined;
  minBatchSize?: number | null | undefined;
  maxBatchSize?: number | null | undefined;
}

/** Sets a migration's pace; returns false when no migration has that name. CHECK constraints guard the values. */
export async function setMigrationPace(db: Queryable, name: string, pace: MigrationPace): Promise<boolean> {
  const sets: SQL[] = [];
  // The operator's word on lanes wins over the latency controller's allowance (it sheds again if need be).
  if (pace.maxParallelJobs !== undefined)
    sets.push(sql`max_parallel_jobs = ${pace.maxParallelJobs}::int, lanes_allowed = NULL, lanes_reason = NULL`);
  if (pace.batchSize !== undefined) sets.push(sql`batch_size = ${pace.batchSize}::int`);
  if (pace.targetJobMs !== undefined) sets.push(sql`target_job_ms = ${pace.targetJobMs}::int`);
  if (pace.minBatchSize !== undefined) sets.push(sql`min_batch_size = ${pace.minBatchSize}::int`);
  if (pace.maxBatchSize !== undefined) sets.push(sql`max_batch_size = ${pace.maxBatchSize}::int`);
  sets.push(sql`updated_at = now()`);
  const rows = await exec(
    db,
    sql`UPDATE batched_background_migrations SET ${sql.join(sets, sql`, `)} WHERE name = ${name} RETURNING id`,
  );
  return rows.length > 0;
}

/**
 * failed -> active, with the failure cleared and the failed jobs' attempts reset, so each gets
 * `maxAttempts` tries again. Returns the number of jobs reset, or null when no failed migration
 * has that name.
 */
export async function retryMigration(db: Queryable, name: string): Promise<number | null> {
  const row = await execOne<{ jobs: string | null }>(
    db,
    sql`
      WITH m AS (
        UPDATE batched_background_migrations
        SET status = ${MigrationStatus.active}, failure_error_code = NULL, failure_message = NULL,
            finished_at = NULL, updated_at = now(), run_errors = 0, on_hold_until = NULL, hold_reason = NULL
        WHERE name = ${name} AND status = ${MigrationStatus.failed}
        RETURNING id
      ), jobs AS (
        UPDATE batched_background_migration_jobs j SET attempts = 0, updated_at = now()
        FROM m WHERE j.batched_background_migration_id = m.id AND j.status = ${JobStatus.failed}
        RETURNING j.id
      )
      SELECT (SELECT count(*) FROM jobs) AS jobs FROM m`,
  );
  return row ? Number(row.jobs) : null;
}

/** Whether a migration of that name exists (in this database). */
export async function migrationExists(db: Queryable, name: string): Promise<boolean> {
  const row = await execOne<{ found: boolean }>(
    db,
    sql`SELECT EXISTS (SELECT FROM batched_background_migrations WHERE name = ${name}) AS found`,
  );
  return row?.found === true;
}
