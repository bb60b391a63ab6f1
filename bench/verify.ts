/**
 * The verification section of `npm run bench` (`--verify-only` for it alone): what a work's check
 * costs (docs/verify.md). A copy of one column into another (`copyColumn`) over a table of
 * `rows` rows keyed by bigint, batches of `batch`, in `lanes` lanes, health holds off:
 *
 * - **plain**: the copy without its check;
 * - **checked**: the copy with its check, after each job in its transaction and in the final
 *   sweep over every range before the migration finishes; the sweep's time is the time from the
 *   last job's end to the migration's finish;
 * - **bbm verify**: `verifyMigration` over the finished migration (read-only, one connection);
 * - **rehearse**: `rehearseMigration` of the plain copy before it runs (10 samples), its projected
 *   duration and WAL against the drain's own (pg_current_wal_lsn before and after).
 *
 * Each round runs plain, then checked (then verify), each on the table reset (the target column
 * set back to NULL, not timed) and freshly vacuumed; the median over rounds of each share is
 * reported. The targets (issue 31): the sweep at most 15 % of the migration's own time; the
 * rehearsal's projections within ±30 % of the measured duration and WAL at 1 lane.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { pino } from 'pino';
import { rehearseMigration } from '../src/bbm/rehearse.ts';
import { verifyMigration } from '../src/bbm/verify.ts';
import type { JobKey, RunResult, Work } from '../src/bbm/types.ts';
import { copyColumn } from '../src/work/copy-column.ts';
import { benchWorker } from './drain.ts';

export interface VerifyBenchOptions {
  rows: number;
  batch: number;
  lanes: number;
  rounds: number;
}

export interface VerifyBenchResult {
  rows: number;
  lanes: number;
  /** The copy without its check, rows/s (median). */
  plainRowsPerSec: number;
  /** The copy with its check and sweep, rows/s (median). */
  checkedRowsPerSec: number;
  /** The checked migration's time over the plain one's (median of per-round ratios). */
  checkedCost: number;
  /** The final sweep's time over the plain migration's (median of per-round ratios). */
  sweepShare: number;
  /** bbm verify's time over the plain migration's (median of per-round ratios). */
  verifyShare: number;
  /** The rehearsal's projected duration over the plain drain's measured one (median). */
  rehearsedDuration: number;
  /** The rehearsal's projected WAL over the WAL the plain drain wrote (median). */
  rehearsedWal: number;
}

const quiet = pino({ level: 'silent' });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const round3 = (x: number) => Math.round(x * 1000) / 1000;
let pass = 0;
const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;
const within30 = (ratio: number) => ratio >= 0.7 && ratio <= 1.3;

async function walLsn(pool: pg.Pool): Promise<string> {
  return (await pool.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0]!.lsn;
}

async function walSince(pool: pg.Pool, lsn: string): Promise<number> {
  const { rows } = await pool.query<{ bytes: string }>(
    'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint::text AS bytes',
    [lsn],
  );
  return Number(rows[0]!.bytes);
}

/** Drains a fresh migration of `work` over bench_verify; its duration and the final sweep's (0 without a check). */
async function migrate(
  pool: pg.Pool,
  work: Work<JobKey>,
  { batch, lanes }: VerifyBenchOptions,
): Promise<{
  name: string;
  ms: number;
  sweepMs: number;
  walBytes: number;
  projected?: { ms: number; walBytes: number };
}> {
  pass += 1;
  const name = `bench_verify_${pass}`;
  await pool.query('UPDATE bench_verify SET b = NULL WHERE b IS NOT NULL');
  await pool.query('VACUUM bench_verify');
  await pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
     VALUES ($1, $2, $3, 'bench_verify', 'id', $4)`,
    [name, batch, work.name, lanes],
  );
  let lastJobAt = 0;
  let finishedAt = 0;
  const observer = {
    run(result: RunResult) {
      const at = performance.now();
      if (result.outcome === 'job_succeeded') lastJobAt = Math.max(lastJobAt, at);
      if (result.outcome === 'migration_finished') finishedAt = at;
    },
  };
  let projected: { ms: number; walBytes: number } | undefined;
  if (!work.verify) {
    const report = await rehearseMigration({ pool, work: [work], name, lanes, logger: quiet });
    if (!report.projection) throw new Error(`verify bench: the rehearsal of ${name} projected nothing`);
    projected = { ms: report.projection.durationSeconds * 1000, walBytes: report.projection.walBytes };
  }
  const worker = benchWorker(pool, { work: [work], lanes, health: false, observers: [observer] });
  const walBefore = await walLsn(pool);
  const started = performance.now();
  await worker.run({ untilDone: true });
  const ms = performance.now() - started;
  const walBytes = await walSince(pool, walBefore);
  const { rows } = await pool.query<{ wrong: number }>(
    'SELECT count(*)::int AS wrong FROM bench_verify WHERE b IS DISTINCT FROM a',
  );
  if (rows[0]!.wrong !== 0) throw new Error(`verify bench: ${rows[0]!.wrong} rows not copied by ${name}`);
  const sweepMs = work.verify && finishedAt > 0 ? finishedAt - lastJobAt : 0;
  return { name, ms, sweepMs, walBytes, ...(projected && { projected }) };
}

export async function verifyBench(
  pool: pg.Pool,
  options: VerifyBenchOptions,
  log: (text: string) => void,
): Promise<VerifyBenchResult> {
  const { rows, rounds } = options;
  await pool.query('DROP TABLE IF EXISTS bench_verify');
  await pool.query(
    'CREATE TABLE bench_verify (id bigint PRIMARY KEY, a int NOT NULL, b bigint) WITH (autovacuum_enabled = false)',
  );
  await pool.query('INSERT INTO bench_verify (id, a) SELECT i, i FROM generate_series(1, $1::int) i', [rows]);
  await pool.query('VACUUM ANALYZE bench_verify');
  const checked = copyColumn({ name: 'bench.verify_copy', from: 'a', to: 'b' });
  const plain: Work<JobKey> = { name: 'bench.plain_copy', do: (job) => checked.do(job) };
  const plainMs: number[] = [];
  const checkedMs: number[] = [];
  const costs: number[] = [];
  const sweeps: number[] = [];
  const verifies: number[] = [];
  const rehearsedDurations: number[] = [];
  const rehearsedWals: number[] = [];
  // A warm-up pass: a freshly loaded table keeps getting faster over its first rewrites.
  await migrate(pool, plain, options);
  for (let round = 0; round < rounds; round += 1) {
    const p = await migrate(pool, plain, options);
    const c = await migrate(pool, checked, options);
    const started = performance.now();
    const report = await verifyMigration({ pool, work: [checked], name: c.name, logger: quiet });
    const verifyMs = performance.now() - started;
    if (report.rows !== 0) throw new Error(`verify bench: bbm verify found ${report.rows} rows failing`);
    plainMs.push(p.ms);
    checkedMs.push(c.ms);
    costs.push(c.ms / p.ms);
    sweeps.push(c.sweepMs / p.ms);
    verifies.push(verifyMs / p.ms);
    rehearsedDurations.push(p.projected!.ms / p.ms);
    rehearsedWals.push(p.projected!.walBytes / p.walBytes);
    log(
      `  verify round ${round + 1}: plain ${Math.round(p.ms)} ms (rehearsal projected ${Math.round(p.projected!.ms)} ms, ` +
        `WAL ${mb(p.projected!.walBytes)} projected, ${mb(p.walBytes)} written), checked ${Math.round(c.ms)} ms ` +
        `(sweep ${Math.round(c.sweepMs)} ms), bbm verify ${Math.round(verifyMs)} ms`,
    );
  }
  await pool.query('DROP TABLE bench_verify');
  return {
    rows,
    lanes: options.lanes,
    plainRowsPerSec: Math.round(rows / (median(plainMs) / 1000)),
    checkedRowsPerSec: Math.round(rows / (median(checkedMs) / 1000)),
    checkedCost: round3(median(costs)),
    sweepShare: round3(median(sweeps)),
    verifyShare: round3(median(verifies)),
    rehearsedDuration: round3(median(rehearsedDurations)),
    rehearsedWal: round3(median(rehearsedWals)),
  };
}

export function verifyReport(r: VerifyBenchResult, log: (text: string) => void): void {
  log(
    `verify: ${r.rows.toLocaleString('en')} rows in ${r.lanes} lane(s): copy ${r.plainRowsPerSec.toLocaleString('en')} rows/s, ` +
      `with its check ${r.checkedRowsPerSec.toLocaleString('en')} rows/s (${r.checkedCost.toFixed(3)}× the time); ` +
      `the final sweep ${(r.sweepShare * 100).toFixed(1)} % of the copy's time (target ≤ 15 %: ${r.sweepShare <= 0.15 ? 'met' : 'missed'}), ` +
      `bbm verify ${(r.verifyShare * 100).toFixed(1)} %; ` +
      `rehearse projected ${r.rehearsedDuration.toFixed(2)}× the measured duration and ${r.rehearsedWal.toFixed(2)}× the WAL ` +
      `(target 0.7-1.3: ${within30(r.rehearsedDuration) && within30(r.rehearsedWal) ? 'met' : 'missed'})`,
  );
}
