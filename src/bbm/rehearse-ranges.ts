/**
 * Where a rehearsal's samples run: ranges of the migration's batch size, as its cut would make
 * them, spread evenly over its key space, and the rows in that space. How the spread is found
 * depends on the space's size, so that no choice costs more than a small share of the table:
 *
 *   - it holds no more rows than the samples' ranges: they are its first ranges, from its start,
 *     and cover it (`whole`);
 *   - up to a count's cap: counted on the index, each range centred in an equal share of its rows;
 *   - beyond: a sample of the table's pages (TABLESAMPLE SYSTEM) gives keys at the middles of equal
 *     shares, and the rows are estimated from the table's statistics (or from the sample).
 *
 * Every key, an integer one too, is walked on its index with row-value comparisons in the
 * database (store/rehearsal.ts); keys are never compared here.
 */
import type { Target } from '../store/catalog.ts';
import type { Queryable } from '../store/db.ts';
import { countKeys, keysAt, rangeFrom, sampledKeys, tableRowEstimate, type KeyBounds } from '../store/rehearsal.ts';
import type { RehearsalProjection, RehearsalReport } from './types.ts';

/** Rows of a key space counted on its index at most (or twice the samples' rows, when more); past that, estimated. */
const COUNT_CAP = 100_000;
/** Rows a sample of the table's pages aims at, at least (and 20 a sample range). */
const SAMPLED_ROWS = 2_000;
/** A sample of pages that found fewer keys in the space than ranges asked for is taken again this many times larger. */
const RESAMPLE_FACTOR = 10;
const RESAMPLES = 2;

/** The ranges to rehearse and the rows of the key space they stand for. */
export interface SampleRanges {
  ranges: KeyBounds[];
  rows: number;
  rowsBasis: RehearsalProjection['rowsBasis'];
  sampling: RehearsalReport['sampling'];
}

export async function sampleRanges(
  db: Queryable,
  target: Target,
  space: KeyBounds,
  { count, size }: { count: number; size: number },
): Promise<SampleRanges> {
  const cap = Math.max(COUNT_CAP, 2 * count * size);
  const counted = await countKeys(db, target, space, cap);
  if (counted <= count * size) {
    return {
      ranges: await rangesFromStart(db, target, space, count, size),
      rows: counted,
      rowsBasis: 'counted',
      sampling: 'whole',
    };
  }
  if (counted < cap) {
    const share = counted / count;
    const places = Array.from({ length: count }, (_, i) => Math.max(0, Math.floor((i + 0.5) * share - size / 2)));
    const starts = await keysAt(db, target, space, places);
    return {
      ranges: await rangesAt(db, target, space, starts, size),
      rows: counted,
      rowsBasis: 'counted',
      sampling: 'spread',
    };
  }
  const estimate = await tableRowEstimate(db, target);
  let percent = Math.min(100, (100 * Math.max(SAMPLED_ROWS, 20 * count)) / Math.max(estimate ?? 0, cap));
  let sampled = await sampledKeys(db, target, space, percent, count);
  for (let i = 0; i < RESAMPLES && sampled.keys.length < count && percent < 100; i += 1) {
    percent = Math.min(100, percent * RESAMPLE_FACTOR);
    sampled = await sampledKeys(db, target, space, percent, count);
  }
  // The statistics' rows, times the share of the sampled rows in the space; without statistics,
  // the sampled rows in the space scaled up by the share of pages read. At least the count's cap.
  const inside =
    estimate !== null && estimate > 0 && sampled.sampledRows > 0
      ? (estimate * sampled.insideRows) / sampled.sampledRows
      : (sampled.insideRows * 100) / percent;
  const starts = sampled.keys.length > 0 ? sampled.keys : [space.start];
  return {
    ranges: await rangesAt(db, target, space, starts, size),
    rows: Math.max(cap, Math.round(inside)),
    rowsBasis: 'estimated',
    sampling: 'spread',
  };
}

/** The first `count` ranges of the key space, one after the other, as its cuts would make them. */
async function rangesFromStart(
  db: Queryable,
  target: Target,
  space: KeyBounds,
  count: number,
  size: number,
): Promise<KeyBounds[]> {
  const ranges: KeyBounds[] = [];
  for (let previous: KeyBounds | undefined; ranges.length < count;) {
    const from = previous ? previous.end : space.start;
    const range = await rangeFrom(db, target, space, from, { after: previous !== undefined, size });
    if (!range) break;
    ranges.push(range);
    previous = range;
  }
  return ranges;
}

/** A range from each start key, in key order, each past the one before (starts close together do not overlap). */
async function rangesAt(
  db: Queryable,
  target: Target,
  space: KeyBounds,
  starts: readonly (readonly string[])[],
  size: number,
): Promise<KeyBounds[]> {
  const ranges: KeyBounds[] = [];
  for (const start of starts) {
    const past = ranges.at(-1)?.end;
    const range = await rangeFrom(db, target, space, start, { after: false, size, past });
    if (range) ranges.push(range);
  }
  return ranges;
}
