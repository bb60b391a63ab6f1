/** `bbm verify`: the work's check over every finished range of a migration, read-only (docs/verify.md). */
import { verifyMigration } from '../bbm/verify.ts';
import { requiredFlag, UsageError } from './args.ts';
import type { Context } from './context.ts';
import { logger, workerOptionsOf } from './run-commands.ts';

export async function verify(context: Context): Promise<number> {
  const { config, flags, pool } = context;
  const name = requiredFlag(flags, 'name', 'verify');
  if (!config) throw new UsageError(`bbm verify needs --config with the work function of ${name}`);
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const report = await verifyMigration({
      runTimeoutMs: workerOptionsOf(config).runTimeoutMs,
      pool,
      work: config.work,
      name,
      logger: logger(context, 2),
      signal: stop.signal,
    });
    context.print(report, () => {
      const checked = `${name}: ${report.rangesChecked} ranges checked in ${(report.durationMs / 1000).toFixed(1)} s`;
      if (report.rows === 0) return `${checked}; every row satisfies the check`;
      const listed = report.failing.map(
        (f) => `  job ${f.jobId} [${f.range}]: ${f.rows} rows${f.example === undefined ? '' : ` (one: ${f.example})`}`,
      );
      const more =
        report.rangesFailing > report.failing.length
          ? [`  … and ${report.rangesFailing - report.failing.length} more ranges`]
          : [];
      return [
        `${checked}; ${report.rows} rows in ${report.rangesFailing} ranges fail the check:`,
        ...listed,
        ...more,
      ].join('\n');
    });
    return report.rows === 0 ? 0 : 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
