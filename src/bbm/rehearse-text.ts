/**
 * A rehearsal's report as people read it (docs/rehearse.md): the line that says what was
 * rehearsed and the projection with its model's caveats, as `bbm rehearse` prints them and the
 * status page shows the last one.
 */
import { laneSpeedup } from './rehearse-projection.ts';
import { duration, percent } from './report-text.ts';
import type { RehearsalProjection, RehearsalReport } from './types.ts';

/** `Rehearsed N (work on table by key, batch 1,000, paused): 10 sample ranges, each rolled back`. */
export function rehearsalHeadline(report: Omit<RehearsalReport, 'samples'>, sampleCount: number): string {
  return (
    `Rehearsed ${report.migration} (${report.work} on ${report.table} by ${report.key.join(', ')}, ` +
    `batch ${count(report.batchSize)}, ${report.enqueued ? report.status : 'not enqueued'}): ` +
    `${sampleCount} sample ranges, each rolled back` +
    (report.sampling === 'whole' ? ', covering the whole key space' : '')
  );
}

/** The projection, a line a figure, each with how it was reached (the lanes' speed-up, the engine's time per job). */
export function projectionText(p: RehearsalProjection | null): string {
  if (!p) return 'No projection: the work failed on every sample.';
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
      `${seconds(p.durationSeconds)} (${p.msPerRow.toFixed(4)} ms a row, and ${p.engineMsPerJob} ms a job for the engine)`,
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

export const count = (n: number) => Math.round(n).toLocaleString('en');

/** Bytes in the units pg_size_pretty uses (1 kB = 1024 bytes). */
export function bytes(n: number): string {
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
