/** `bbm rehearse`: a migration's work run on sample ranges and rolled back, projected to the whole (docs/rehearse.md). */
import { rehearseMigration, RehearseError } from '../bbm/rehearse.ts';
import { bytes, count, projectionText, rehearsalHeadline } from '../bbm/rehearse-text.ts';
import { boundText, createLogger } from '../bbm/log.ts';
import type { RehearsalReport, RehearsalSample } from '../bbm/types.ts';
import { MAX_LANES } from '../store/codes.ts';
import { integerFlag, requiredFlag, UsageError } from './args.ts';
import { migrationSpec } from './change-commands.ts';
import type { Context } from './context.ts';
import { percent, table } from './format.ts';

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
      logger: createLogger({ level: 'warn', destination: 2, mask: context.mask }),
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
  const lines = [rehearsalHeadline(report, report.samples.length), ''];
  if (report.samples.length > 0) {
    lines.push(
      table(['range', 'rows', 'work', 'ms/row', 'WAL', 'HOT', 'lock wait', 'error'], report.samples.map(sampleRow)),
      '',
    );
  }
  lines.push(projectionText(report.projection));
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
