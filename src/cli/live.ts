/**
 * `bbm run` on a terminal: one live progress line per runnable migration (of each database of a
 * fleet, named `database/name`), redrawn in place every second, and above it one line per state
 * change (seen by polling, so other workers' changes show too) and per log line (failures). Log
 * lines reach the terminal through `stream`, so they never tear the redrawn block. Off a terminal, or with --log-format json, none of this is used.
 */
import { Writable } from 'node:stream';
import { lanesText, progressText } from '../bbm/report-text.ts';
import { readEachDatabase } from '../bbm/databases.ts';
import { migrationReports } from '../bbm/status.ts';
import type { MigrationReport } from '../bbm/types.ts';
import { RUNNABLE_STATUSES, statusIn } from '../store/codes.ts';
import type { Queryable } from '../store/db.ts';
import { duration, progressBar } from './format.ts';

export interface LiveDisplay {
  /** Where the logger writes its (single-line) lines: each is printed above the block. */
  readonly stream: Writable;
  start(): void;
  /** Stops redrawing; the last block stays on screen as the summary. */
  stop(): Promise<void>;
}

const REDRAW_MS = 1_000;
const POLL_TIMEOUT_MS = 5_000;
const UP = (lines: number) => `\x1b[${lines}A`;
const CLEAR_DOWN = '\x1b[0J';

/** A database the display shows: `name` is its name in a fleet (shown as `name/migration`), undefined alone. */
export interface LiveSource {
  name: string | undefined;
  db: Queryable;
}

export function createLiveDisplay({
  databases,
  knownWork,
  write,
}: {
  databases: readonly LiveSource[];
  knownWork: readonly string[];
  write: (text: string) => void;
}): LiveDisplay {
  let drawn: string[] = [];
  let previous = new Map<string, MigrationReport['status']>();
  let timer: NodeJS.Timeout | undefined;
  let polling: Promise<void> | undefined;

  const undraw = () => (drawn.length > 0 ? `${UP(drawn.length)}${CLEAR_DOWN}` : '');
  const above = (lines: string) => write(`${undraw()}${lines}${drawn.map((line) => `${line}\n`).join('')}`);

  const poll = async () => {
    // A database that does not answer within POLL_TIMEOUT_MS only leaves its lines out of this
    // redraw (its worker logs its trouble): a silent one must not freeze the others' lines.
    const reads = await readEachDatabase(databases, ({ db }) => migrationReports(db, { knownWork }), POLL_TIMEOUT_MS);
    const reports = reads.flatMap(({ source: { name }, value }) =>
      (value ?? []).map((report) => (name === undefined ? report : { ...report, name: `${name}/${report.name}` })),
    );
    const changes: string[] = [];
    const next = new Map<string, MigrationReport['status']>();
    for (const report of reports) {
      next.set(report.name, report.status);
      const before = previous.get(report.name);
      if (before !== undefined && before !== report.status)
        changes.push(`${report.name}: ${before} → ${describeChange(report)}\n`);
    }
    previous = next;
    const block = reports.filter((r) => statusIn(RUNNABLE_STATUSES, r.status)).map(progressLine);
    write(`${undraw()}${changes.join('')}${block.map((line) => `${line}\n`).join('')}`);
    drawn = block;
  };
  const tick = () => {
    polling ??= poll()
      .catch(() => {}) // a failed poll only skips a redraw; the worker logs database trouble itself
      .finally(() => (polling = undefined));
  };

  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      above(chunk.toString());
      done();
    },
  });

  return {
    stream,
    start() {
      tick();
      timer = setInterval(tick, REDRAW_MS);
      timer.unref();
    },
    async stop() {
      clearInterval(timer);
      await polling;
      await poll().catch(() => {});
      drawn = []; // leave the last block as the summary
    },
  };
}

function describeChange(report: MigrationReport): string {
  switch (report.status) {
    case 'finished':
      return `finished (${report.jobs.finished} jobs${report.startedAt && report.finishedAt ? ` in ${duration((report.finishedAt.getTime() - report.startedAt.getTime()) / 1000)}` : ''})`;
    case 'failed':
      return `failed (${report.failureErrorCode ?? 'unknown'}): ${report.failureMessage ?? ''}`;
    default:
      return report.status;
  }
}

function progressLine(report: MigrationReport): string {
  const held =
    report.onHoldUntil && report.onHoldUntil.getTime() > Date.now() ? `, held: ${report.holdReason ?? ''}` : '';
  return (
    `${report.name} ${progressBar(report.progress, 20, progressText(report))} ${report.jobs.finished} jobs` +
    (report.rowsPerSecond === null ? '' : `, ${Math.round(report.rowsPerSecond).toLocaleString('en')} rows/s`) +
    (report.etaSeconds === null ? '' : `, ${duration(report.etaSeconds)} left`) +
    `, ${report.lanesInUse}/${report.lanes} lanes` +
    (report.lanesAllowed < report.lanes ? ` (${lanesText(report)})` : '') +
    `, batch ${report.batchSize.toLocaleString('en')}` +
    (report.waitingForWork ? ', waiting for a worker with its work function' : '') +
    held
  );
}
