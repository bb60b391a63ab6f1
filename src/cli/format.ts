/** Output for people (aligned tables) and for machines (JSON with exact bigints). */
import { randomBytes } from 'node:crypto';
import { percent } from '../bbm/report-text.ts';

// Shared with the status page.
export { duration, percent } from '../bbm/report-text.ts';

/**
 * JSON where bigints are numbers written out in full (JSON numbers have no size limit; a
 * JavaScript reader loses precision past 2^53, a bigint-aware one does not).
 */
export function toJson(value: unknown, indent = 2): string {
  // A marker no string in the data can contain by chance.
  const marker = `bigint-${randomBytes(8).toString('hex')}:`;
  const text = JSON.stringify(value, (_, v: unknown) => (typeof v === 'bigint' ? `${marker}${v}` : v), indent);
  return text.replace(new RegExp(`"${marker}(-?\\d+)"`, 'g'), '$1');
}

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

/** A bar of `fraction`, then `label` (the percentage, unless the caller words it: an estimate, rows). */
export function progressBar(fraction: number, width = 30, label = percent(fraction)): string {
  const full = Math.max(0, Math.min(width, Math.round(fraction * width)));
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${label.padStart(6)}`;
}
