/** `bbm rehearse`: a migration's work run on sample ranges and rolled back, projected to the whole (docs/rehearse.md). */
import { rehearseMigration, RehearseError } from '../bbm/rehearse.ts';
import { laneSpeedup } from '../bbm/rehearse-projection.ts';
import { boundText, createLogger } from '../bbm/log.ts';
import type { RehearsalProjection, RehearsalReport, RehearsalSample } from '../bbm/types.ts';
import { MAX_LANES } from '../store/codes.ts';
import { integerFlag, requiredFlag, UsageError } from './args.ts';
import { migrationSpec } from './change-commands.ts';
import type { Context } from './context.ts';
import { duration, percent, table } from './format.ts';

/**
 * Exit 0 with the report; 1 when a sample's work failed (the report is still printed, and stored
 * for an enqueued migration) or it was refused.
 */
export async function rehearse(context: Context): Promise<number> {
  const { config, flags, pool, io } = context;
  const name = requiredFlag(flags, 'name', 'rehearse');
  if (!config) throw new UsageError(`bbm rehearse needs --config with the work function of ${name}`);
  // With --work, the migration is described by bbm enqueue's flags, not enqueued.
  const migration = flags.work === undefined ? { name } : { spec: migrationSpec(context, 'rehearse') };
  const samples = integerFlag(flags, 'samples', { min: 1, max: 1_000 });
  const lanes = integerFlag(flags, 'lanes', { min: 1, max: MAX_LANES });
  try {
    const report = await rehearseMigration({
      pool,
      work: config.work,
      ...migration,
      ...(samples !== undefined && { samples }),
      ...(lanes !== undefined && { lanes }),
      ...(config.runTimeoutMs !== undefined && { runTimeoutMs: config.runTimeoutMs }),
      // The work's own log lines at warn and above, on stderr: stdout is the report.
      logger: createLogger({ level: 'warn', destination: 2 }),
    });
    context.print(report, () => rehearsalText(report));
    return report.failed > 0 ? 1 : 0;
  } catch (error) {
    if (!(error instanceof RehearseError)) throw error;
    io.err(context.mask(`bbm rehearse: ${error.message}`));
    return error.code === 'work_not_registered' ? 2 : 1;
  }
}

/** The report as people read it: the samples, one a line, then the projection. */
export function rehearsalText(report: RehearsalReport): string {
  const { projection } = report;
  const lines = [
    `Rehearsed ${report.migration} (${report.work} on ${report.table} by ${report.key.join(', ')}, ` +
      `batch ${count(report.batchSize)}, ${report.enqueued ? report.status : 'not enqueued'}): ` +
      `${report.samples.length} sample ranges, each rolled back` +
      (report.sampling === 'whole' ? ', covering the whole key space' : ''),
    '',
  ];
  if (report.samples.length > 0) {
    lines.push(
      table(['range', 'rows', 'work', 'ms/row', 'WAL', 'HOT', 'lock wait', 'error'], report.samples.map(sampleRow)),
      '',
    );
  }
  lines.push(projection ? projectionText(projection) : 'No projection: the work failed on every sample.');
  if (report.failed > 0) lines.push('', `${report.failed} of ${report.samples.length} samples failed (see error).`);
  return lines.join('\n');
}

function sampleRow(sample: RehearsalSample): string[] {
  const written = sample.written;
  return [
    `${boundText(0n, sample.start)} .. ${boundText(0n, sample.end)}`,
    count(sample.rows),
    `${sample.workMs.toFixed(1)} ms`,
    sample.msPerRow === null ? '-' : sample.msPerRow.toFixed(4),
    written ? bytes(written.walBytes) : '-',
    written && written.updated > 0 ? percent(written.hotUpdated / written.updated) : '-',
    sample.lockWaitMs === null ? '-' : `${Math.round(sample.lockWaitMs)} ms`,
    sample.error === null ? '' : `${sample.timeout ? 'timeout: ' : ''}${sample.error}`,
  ];
}

function projectionText(p: RehearsalProjection): string {
  const measured = p.laneSpeedup === laneSpeedup(p.lanes);
  const speedup =
    p.lanes === 1
      ? 'one lane'
      : `${p.lanes} lanes at ${p.laneSpeedup}× one lane's pace${measured ? " (npm run bench's on 2 cores)" : ''}`;
  const rows = [
    ['rows', `${count(p.rows)} (${p.rowsBasis})`],
    ['jobs', `${count(p.jobs)} of ${count(p.batchSize)} rows`],
    [
      'duration',
      `${seconds(p.durationSeconds)} (${p.msPerRow.toFixed(4)} ms a row; the work's time, not the engine's per job)`,
    ],
    ['WAL', `${bytes(p.walBytes)}${p.walBytesPerSecond === null ? '' : `, ${bytes(p.walBytesPerSecond)}/s`}`],
    [
      'dead tuples',
      `${count(p.deadTuples)} for vacuum, ${count(p.deadTuplesNotHot)} of them not HOT` +
        (p.hotShare === null ? '' : ` (HOT updates ${percent(p.hotShare)})`),
    ],
    ['lock waits', p.lockWaitShare === null ? 'not watched' : `${percent(p.lockWaitShare)} of the work's time`],
  ];
  return [`Projected in ${speedup}:`, ...rows.map(([label, value]) => `  ${label!.padEnd(12)} ${value}`)].join('\n');
}

const count = (n: number) => Math.round(n).toLocaleString('en');

/** Bytes in the units pg_size_pretty uses (1 kB = 1024 bytes). */
function bytes(n: number): string {
  const units = ['bytes', 'kB', 'MB', 'GB', 'TB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${Math.round(value)} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

function seconds(s: number): string {
  return s < 1 ? `${Math.round(s * 1000)} ms` : duration(s);
}
