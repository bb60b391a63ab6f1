import { randomBytes } from 'node:crypto';

/** Output for people (aligned tables) and for machines (JSON with exact bigints). */

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

export function percent(fraction: number): string {
  return `${(fraction * 100).toFixed(1)}%`;
}

/** A bar of `fraction`, then `label` (the percentage, unless the caller words it: an estimate, rows). */
export function progressBar(fraction: number, width = 30, label = percent(fraction)): string {
  const full = Math.max(0, Math.min(width, Math.round(fraction * width)));
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${label.padStart(6)}`;
}

/** 42s, 3m05s, 2h10m. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
