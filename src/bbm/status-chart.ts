/**
 * The status page's chart of a migration's jobs: inline SVG drawn from job rows, numbers only (no
 * text from a row reaches it but the job ids, which are integers).
 */
import type { JobPoint } from '../store/dashboard.ts';

const W = 640;
const H = 120;
const PAD = { left: 52, right: 8, top: 26, bottom: 18 };

/**
 * One panel of the chart: a line with a point per job (x: when it ended, y: its value) and a red
 * mark at the bottom for each failed job. Numbers only, so nothing here comes from text in a row.
 */
function panel(
  cls: string,
  label: string,
  points: { job: bigint; at: number; value: number }[],
  failures: { job: bigint; at: number }[],
  [t0, t1]: [number, number],
  offsetY: number,
): string {
  const max = Math.max(...points.map((p) => p.value), 0) || 1;
  const x = (t: number) => PAD.left + (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v: number) => offsetY + PAD.top + (1 - v / max) * (H - PAD.top - PAD.bottom);
  const coords = points.map((p) => `${x(p.at).toFixed(1)},${y(p.value).toFixed(1)}`);
  const base = offsetY + H - PAD.bottom;
  return `<g class="${cls}" id="chart-${cls}"><text x="4" y="${offsetY + 11}">${label}</text>
<text x="${PAD.left - 4}" y="${offsetY + PAD.top + 4}" text-anchor="end">${Math.round(max).toLocaleString('en')}</text>
<text x="${PAD.left - 4}" y="${base}" text-anchor="end">0</text>
<line class="axis" x1="${PAD.left}" y1="${base}" x2="${W - PAD.right}" y2="${base}"/>
${points.length > 1 ? `<polyline class="line" points="${coords.join(' ')}"/>` : ''}
${points
  .map(
    (p, i) =>
      `<circle class="pt" cx="${coords[i]!.split(',')[0]}" cy="${coords[i]!.split(',')[1]}" r="2.5"><title>job ${p.job}: ${p.value.toFixed(1)}</title></circle>`,
  )
  .join('')}
${failures
  .map(
    (f) =>
      `<path class="failpt" d="M${x(f.at).toFixed(1)} ${base - 7}l4 7h-8z"><title>job ${f.job} failed at least once</title></path>`,
  )
  .join('')}</g>`;
}

/** The migration's jobs over time: rows/s of each job's work, and its duration; failures marked in red. */
export function chart(points: JobPoint[]): string {
  if (points.length === 0) return '<div id="chart" data-live><p class="muted">No job has run yet.</p></div>';
  const times = points.map((p) => p.at.getTime());
  const span: [number, number] = [Math.min(...times), Math.max(...times)];
  const timed = points.filter((p) => p.status === 2 && p.durationMs !== null && p.durationMs > 0);
  // A failure is marked where it happened to the range: still failed, or retried to success.
  const failures = points
    .filter((p) => p.status === 3 || p.attempts > 1)
    .map((p) => ({ job: p.id, at: p.at.getTime() }));
  const rate = timed.map((p) => ({ job: p.id, at: p.at.getTime(), value: p.rows / (p.durationMs! / 1000) }));
  const duration = timed.map((p) => ({ job: p.id, at: p.at.getTime(), value: p.durationMs! }));
  const clock = (t: number) => new Date(t).toISOString().slice(11, 19);
  return `<div id="chart" data-live><svg class="chart" viewBox="0 0 ${W} ${2 * H + 16}" role="img" aria-label="rows per second and job duration over time, ${timed.length} jobs, ${failures.length} failed">
${panel('rate', 'rows/s', rate, failures, span, 0)}${panel('dur', 'job ms', duration, failures, span, H)}
<text x="${PAD.left}" y="${2 * H + 12}">${clock(span[0])}</text><text x="${W - PAD.right}" y="${2 * H + 12}" text-anchor="end">${clock(span[1])} UTC</text>
</svg><p class="muted">The last ${points.length} jobs that ran, one point each; red marks: jobs that failed (still failed, or retried).</p></div>`;
}
