/**
 * The numbers stored in the status and error-code columns. They match GitLab's
 * container registry (`registry/datastore/models`), so its documented SQL and
 * dashboards read our tables unchanged. Names are what JSON and logs show.
 */

export const MigrationStatus = {
  paused: 0,
  active: 1,
  finished: 2,
  failed: 3,
  running: 4,
  /**
   * pg-bbm's own (not in the registry): enqueued with `needsApproval`, waiting for `bbm approve`.
   * Not runnable, so no take (bbm_take_job, bbm_take_next) looks at it; approval makes it active.
   */
  awaiting_approval: 5,
} as const;
export type MigrationStatusName = keyof typeof MigrationStatus;
export type MigrationStatusCode = (typeof MigrationStatus)[MigrationStatusName];

/**
 * The status sets, defined once. Runnable: a worker may take its jobs (bbm_take_job gets the same
 * set as {{RUNNABLE_STATUSES}}: sql/functions/bbm_take_job.sql). Unfinished: runnable, paused or
 * awaiting approval (a schedule's next pass waits while its last is unfinished). Deletable: nothing
 * takes its jobs (a migration awaiting approval is deleted to turn it down).
 */
export const RUNNABLE_STATUSES: readonly MigrationStatusName[] = ['active', 'running'];
export const UNFINISHED_STATUSES: readonly MigrationStatusName[] = [
  'paused',
  'awaiting_approval',
  ...RUNNABLE_STATUSES,
];
export const DELETABLE_STATUSES: readonly MigrationStatusName[] = ['paused', 'failed', 'finished', 'awaiting_approval'];

/**
 * What an operator may do to a migration in each status (the status page offers only these, and its
 * server refuses the rest with 409; the store's UPDATEs guard the same transitions in SQL).
 */
export type OperatorAction = 'pause' | 'resume' | 'retry' | 'approve' | 'delete';
export const ACTIONS_BY_STATUS: Readonly<Record<MigrationStatusName, readonly OperatorAction[]>> = {
  active: ['pause'],
  running: ['pause'],
  paused: ['resume', 'delete'],
  failed: ['retry', 'delete'],
  finished: ['delete'],
  awaiting_approval: ['approve', 'delete'],
};

/** Whether a status (by name or number) is in a set. */
export function statusIn(set: readonly MigrationStatusName[], status: MigrationStatusName | number): boolean {
  return set.includes(typeof status === 'number' ? migrationStatusName(status) : status);
}

/** A set's numbers, for SQL: `status IN (1, 4)`. */
export function statusCodes(set: readonly MigrationStatusName[]): string {
  return set.map((name) => MigrationStatus[name]).join(', ');
}

export const JobStatus = {
  active: 1,
  finished: 2,
  failed: 3,
} as const;
export type JobStatusName = keyof typeof JobStatus;
export type JobStatusCode = (typeof JobStatus)[JobStatusName];

export const ErrorCode = {
  unknown: 0,
  invalid_table: 1,
  invalid_column: 2,
  invalid_job_signature: 3,
  max_job_retry: 4,
  invalid_batching_strategy: 5,
  /** pg-bbm's own: the migration's runs kept failing for a reason that is not its work function's. */
  run_error: 6,
  /** The work's check (`verify`) found rows of a range not satisfying it after the work ran (docs/verify.md). */
  verification_failed: 7,
} as const;
export type ErrorCodeName = keyof typeof ErrorCode;
export type ErrorCodeNumber = (typeof ErrorCode)[ErrorCodeName];

/** The largest value of an `integer` column: batch sizes, their bounds, target_job_ms. */
export const INT4_MAX = 2_147_483_647;
/** The bigint (int8) domain: ids and range bounds. */
export const INT8_MIN = -(2n ** 63n);
export const INT8_MAX = 2n ** 63n - 1n;

/** Upper bound of a migration's `max_parallel_jobs`: each lane is an advisory-lock key of its own. */
export const MAX_LANES = 256;

/** The one batching strategy this engine implements: contiguous ranges over an indexed key. */
export const SERIAL_KEY_SET = 'serial_key_set';

/**
 * The ranges of a key that is not a single integer column (docs/keys.md) have their bounds in
 * min_key and max_key; their min_value and max_value hold their place in the order of the ranges,
 * so that takes, cuts and splits order them as integer ranges. Range n is cut as ordinals
 * [1 + (n - 1) x KEY_ORDINAL_STEP, n x KEY_ORDINAL_STEP] (a split halves that, up to 24 times), and
 * the last range ends at KEY_ORDINAL_END, the migration's max_value once it starts.
 */
export const KEY_ORDINAL_STEP = 2n ** 24n;
export const KEY_ORDINAL_END = 2n ** 62n;

function nameOf<T extends Record<string, number>>(table: T, code: number): keyof T & string {
  for (const [name, value] of Object.entries(table)) if (value === code) return name;
  throw new RangeError(`unknown code ${code}`);
}

export const migrationStatusName = (code: number): MigrationStatusName => nameOf(MigrationStatus, code);
export const errorCodeName = (code: number): ErrorCodeName => nameOf(ErrorCode, code);
