/**
 * A migration's bounds, keys and progress as people read them: what `bbm status`, `bbm run`'s
 * progress lines and the status page show. A key migration (MigrationReport.key) is shown in its
 * keys and rows; the ordinals its row holds in min_value and max_value are never shown.
 */
import type { MigrationReport } from './types.ts';

/** A key as people read it: one value as it is, several as `(a, b)`. */
export function keyText(values: readonly string[]): string {
  return values.length === 1 ? values[0]! : `(${values.join(', ')})`;
}

/**
 * The range a migration covers: `[1..100]`, `[1..max]` before an integer key's end is known;
 * for a key migration its first and last keys, `first` and `last` before the start finds them.
 */
export function boundsText(r: Pick<MigrationReport, 'minValue' | 'maxValue' | 'key'>): string {
  if (!r.key) return `[${r.minValue}..${r.maxValue ?? 'max'}]`;
  return `[${r.key.min ? keyText(r.key.min) : 'first'}..${r.key.max ? keyText(r.key.max) : 'last'}]`;
}

type ProgressOf = Pick<MigrationReport, 'status' | 'progress' | 'progressBasis' | 'key'>;

/** Whether `progress` is an estimate: a key migration's rows, until it finishes. */
export function progressIsEstimate(r: ProgressOf): boolean {
  return r.progressBasis === 'rows-estimate' && r.status !== 'finished';
}

/**
 * Progress as people read it: `40.0%`; `~40.0%` for an estimate; the rows done (`300 rows`) when
 * the table has no estimate to measure them against.
 */
export function progressText(r: ProgressOf): string {
  const percent = `${(r.progress * 100).toFixed(1)}%`;
  if (!progressIsEstimate(r)) return percent;
  if (r.key?.estimatedRows === null) return `${r.key.finishedRows.toLocaleString('en')} rows`;
  return `~${percent}`;
}

/** A key migration's progress in rows and keys: `300 of about 1,000 rows, finished through k` (empty for an integer key). */
export function keyProgressText(r: Pick<MigrationReport, 'key'>): string {
  if (!r.key) return '';
  const { finishedRows, estimatedRows, finishedPrefix } = r.key;
  const rows =
    estimatedRows === null
      ? `${finishedRows.toLocaleString('en')} rows (no estimate of the table's rows: ANALYZE it)`
      : `${finishedRows.toLocaleString('en')} of about ${estimatedRows.toLocaleString('en')} rows`;
  return finishedPrefix ? `${rows}, finished through ${keyText(finishedPrefix)}` : rows;
}

/**
 * The final sweep of a work with a check (docs/verify.md): `verifying: 12 of 40 ranges checked`
 * while it runs, `verified` once every range passed, with what it fixed (empty when no range of
 * it has been checked).
 */
export function verificationText(r: Pick<MigrationReport, 'verification' | 'jobs'>): string {
  const v = r.verification;
  if (!v) return '';
  const fixed =
    v.rowsFound > 0
      ? `; found ${v.rowsFound.toLocaleString('en')} rows failing the check (written after their range ran) and ran the work again on ${v.rangesRerun} ranges`
      : '';
  if (v.verifiedAt) return `verified at ${v.verifiedAt.toISOString()}: every range passed the check${fixed}`;
  return `verifying: ${v.rangesVerified} of ${r.jobs.finished} ranges checked${fixed}`;
}

export function percent(fraction: number): string {
  return `${(fraction * 100).toFixed(1)}%`;
}

/** 42s, 3m05s, 2h10m. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/**
 * Why a migration runs in fewer lanes than it has (MigrationReport.lanesReason), with the lanes it
 * is allowed; null when it is allowed all of them. A worker of a release before the reason was
 * recorded sheds without one: then only the latency controller is named.
 */
export function lanesText(r: Pick<MigrationReport, 'lanes' | 'lanesAllowed' | 'lanesReason'>): string | null {
  if (r.lanesAllowed >= r.lanes) return null;
  const allowed = `${r.lanesAllowed} of ${r.lanes} lanes`;
  switch (r.lanesReason) {
    case 'slow start':
      return `slow start: ${allowed}, growing while jobs stay fast`;
    case 'latency':
      return `latency: ${allowed} (its jobs took far longer per row than their norm)`;
    case 'commit latency':
      return `commit latency: ${allowed} (the application's commits slowed beside its jobs)`;
    case null:
      return `latency: ${allowed} allowed`;
  }
}

/** A worker's duty cycle as people read it: `commit latency: lanes run 50 % of the time`; null at 1 (or unknown). */
export function dutyCycleText(dutyCycle: number | null): string | null {
  if (dutyCycle === null || dutyCycle >= 1) return null;
  return `commit latency: lanes run ${Math.round(dutyCycle * 100)} % of the time`;
}
