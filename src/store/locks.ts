/**
 * Every advisory-lock key pg-bbm takes, in one place. All are two-int4 keys whose first half
 * spells "bbm" (0x62626d); keys of other applications that use the same form rarely collide, and a
 * collision only makes a worker wait or skip, never run a range twice.
 */

/**
 * First half of the keys below. (LOCK_NAMESPACE, migration id) is a migration's cursor: held by
 * the short transaction that cuts its next range or changes its state. The SQL functions get it as
 * {{LOCK_NAMESPACE}} (sql/functions/, filled in at install by src/store/functions.ts).
 */
export const LOCK_NAMESPACE = 0x62626d;

/**
 * A migration's half of its keys is its id modulo 2^31, as an int4 (ids start at 1, so it is never
 * negative); ids that far apart share keys, which only makes a worker wait or skip.
 */
export const MIGRATION_KEY_MODULUS = 2 ** 31;

/**
 * Lane k of a migration is (LANE_LOCK_BASE + k, migration id), held by the job running in it for
 * its whole transaction (sql/functions/bbm_take_job.sql). 0x62626d00: "bbm" and a lane byte.
 */
export const LANE_LOCK_BASE = 0x62626d00;

/** (LOCK_NAMESPACE, 0): serialises schema migrations (`bbm migrate`); migration ids start at 1. */
export const MIGRATE_LOCK_KEY = 0;

/** (LOCK_NAMESPACE, -1): the scheduler's, never a migration's. */
export const SCHEDULER_LOCK_KEY = -1;

/**
 * (LOCK_NAMESPACE, -2): held shared by every run from its take to its end (bbm_take_job takes it,
 * sql/functions/bbm_take_job.sql). A worker measuring what commits take with no run in flight takes it
 * exclusively for a few commits (foreground protection, workers.ts whileRunsHeld): it waits for
 * the runs in flight to end, and every take of every worker waits behind it meanwhile.
 */
export const QUIET_LOCK_KEY = -2;

/**
 * How long a take waits for the quiet lock before answering busy (sql/functions/bbm_quiet_shared.sql):
 * past a quiet round's own wait for the runs in flight (1 s) and its commits, so that a round that
 * goes as planned never turns a take away.
 */
export const QUIET_TAKE_WAIT_MS = 2_000;

/**
 * How soon a lane turned away looks again when a lane may be given back without any run ending
 * (sql/functions/bbm_take_job.sql look_again_ms): a migration's lanes bound by a controller, whose
 * growth in any worker gives lanes back within milliseconds of a few jobs, or a quiet round. Its
 * worker's own controllers wake its lanes at once; this bounds what a fleet's other workers wait.
 * A take costs about 0.2 ms of server time, so a fleet of 40 lanes turned away costs 8 ms a second.
 */
export const LANES_RECHECK_MS = 1_000;

/**
 * The least a lane turned away waits where the migration's own jobs say when to look again (its
 * last ranges running elsewhere, slow start: sql/functions/bbm_look_again_after_jobs.sql). Those
 * moments should last a few jobs; where one lasts longer, the lane doubles its waits up to
 * LANES_RECHECK_MS (Backoff.soon), so it costs a few takes, not a steady load.
 */
export const LANES_RECHECK_MIN_MS = 10;

/**
 * Healthy jobs (within 1.25x of their norm), begun after the last change, after which the latency
 * controller gives a migration a lane back (src/bbm/latency-lanes.ts). Few enough that a migration
 * of 5 ms jobs reaches four lanes within a second; each one begun after the change, so the count
 * is of jobs that ran beside the lane the last change added. In slow start, a lane turned away
 * looks again after that many of the migration's jobs.
 */
export const GROW_AFTER_HEALTHY_JOBS = 4;
