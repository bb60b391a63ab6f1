/**
 * A built-in work function: copy one column into another over each range, the classic
 * backfill before a column swap (e.g. int -> bigint). Column names come from code, and are
 * quoted all the same.
 */
import { sql } from 'drizzle-orm';
import type { Work } from '../bbm/types.ts';
import { ConfigError } from '../bbm/errors.ts';

export interface CopyColumnOptions {
  /** The work name migrations refer to in `job_signature_name`. */
  name: string;
  from: string;
  to: string;
  /** Only rows where the target differs are written, so reruns write nothing twice [true]. */
  skipUnchanged?: boolean;
}

export function copyColumn({ name, from, to, skipUnchanged = true }: CopyColumnOptions): Work {
  if (!from || !to || from === to)
    throw new ConfigError(`copyColumn ${name}: \`from\` and \`to\` must be two different columns`);
  return {
    name,
    async do(job) {
      const source = sql.identifier(from);
      const target = sql.identifier(to);
      const changed = skipUnchanged ? sql` AND ${target} IS DISTINCT FROM ${source}` : sql``;
      const result = await job.db.execute(sql`
        UPDATE ${sql.raw(job.table)} SET ${target} = ${source}
        WHERE ${sql.raw(job.column)} BETWEEN ${job.start}::bigint AND ${job.end}::bigint${changed}`);
      return result.rowCount ?? undefined;
    },
  };
}
