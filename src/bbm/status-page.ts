/**
 * The status page: an overview (counts by status, the fleet's rows/s, holds, what awaits approval
 * or a work function, the live workers), every migration with its progress, pace, lanes and why it
 * is held back, a page per migration with a chart of its jobs, its recent jobs and failed ranges,
 * updated live, and its last rehearsal's projection; and, behind the operator token, the actions
 * its state allows (ACTIONS_BY_STATUS: pause, resume, retry, approve, delete; rehearse, given the
 * work functions) and its pace. Rendering is status-page-html.ts.
 *
 * Served by the ops server (`bbm run --metrics-port`, `bbm dashboard`). Plain server-rendered
 * HTML and a little script; no framework, no build step. Everything shown comes from rows and is
 * escaped (server side by `html`, client side by textContent). State changes are POSTs only, and
 * need the token in a header (which a cross-site form cannot send) from the page's own origin.
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type pg from 'pg';
import type { Logger } from 'pino';
import { approveMigration } from '../store/approvals.ts';
import { jobTimeline, liveWorkers } from '../store/dashboard.ts';
import { recentJobs } from '../store/jobs.ts';
import { INT4_MAX, MAX_LANES } from '../store/codes.ts';
import { deleteMigration, retryMigration, setMigrationPace, type MigrationPace } from '../store/migration-rows.ts';
import { LIVE_WORKER_WINDOW_MS } from '../store/workers.ts';
import { scheduleReports, schedulesIn, type ResolvedSchedule } from './schedules.ts';
import { rehearseMigration, RehearseError, type RehearseErrorCode } from './rehearse.ts';
import {
  actionsFor,
  CLIENT_SCRIPT,
  html,
  listPage,
  migrationPage,
  type Controls,
  type PageAction,
} from './status-page-html.ts';
import { migrationReports, pause, resume } from './status.ts';
import type { AnyWork, RehearsalReport } from './types.ts';
import { addressText, databaseList, parseAddress, readEachDatabase, shownReport } from './databases.ts';

export { html };

export interface StatusPageOptions {
  /** The database whose migrations the page shows. */
  db?: pg.Pool | pg.ClientBase;
  /**
   * Or several, by name (a fleet's `databases`): the page lists them all, each up or down, and a
   * migration is addressed as `database/name` in its links and actions.
   */
  databases?: ReadonlyMap<string, pg.Pool>;
  /** The config's schedules, shown with their last pass and when the next is due. */
  schedules?: readonly ResolvedSchedule[] | undefined;
  /** The operator token: without one the page is read-only (and says so). */
  token?: string | undefined;
  log?: Logger | undefined;
  /** What rehearse needs (the config's work functions); without it the page does not offer rehearse. */
  rehearse?: PageRehearsal | undefined;
  /**
   * Applied to each database's error the page shows: `bbm` hides its URLs' passwords with it
   * (connectionMasker). Unchanged without it.
   */
  mask?: ((text: string) => string) | undefined;
}

/** Rehearsing from the page: rehearseMigration with these, the migration's defaults otherwise. */
export interface PageRehearsal {
  /**
   * Where the samples run: a connection of it, and one more, when free, for their lock watch. In
   * a fleet of several databases, the migration's database's pool is used.
   */
  pool?: pg.Pool | undefined;
  work: readonly AnyWork[];
  /** As the worker's: a sample's work is bounded as a job's. */
  runTimeoutMs?: number | undefined;
}

/**
 * How long a request waits for its rehearsal, which is then stopped (the sample in flight rolled
 * back) and answered 503: under the ops server's idle timeout (60 s), which would cut the
 * connection of a response that took longer.
 */
export const PAGE_REHEARSAL_LIMIT_MS = 50_000;

/** The status a refused rehearsal is answered with. */
const REHEARSE_ERROR_STATUS: Record<RehearseErrorCode, number> = {
  unknown_migration: 404,
  settled: 409, // finished or failed meanwhile
  work_not_registered: 422,
  side_effects: 422,
  invalid_migration: 422,
  stopped: 503, // past PAGE_REHEARSAL_LIMIT_MS
};

/**
 * Handles the page's routes: false for a request that is not the page's, else the promise of its
 * answer. A request the page cannot serve (a malformed name, a bad body) is answered 4xx here; the
 * promise rejects only for a failure of the page itself (the caller answers that 500).
 */
export type StatusPage = (request: IncomingMessage, response: ServerResponse) => Promise<void> | false;

type Action = PageAction | 'set';

/** A request the page refuses, with the status it answers. */
class BadRequest extends Error {
  constructor(
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

/** Largest POST body read, in bytes; a larger one is answered 413 without reading it. */
const MAX_BODY_BYTES = 4096;

/** A POST's JSON body, or {} when there is none. */
async function readBody(request: IncomingMessage): Promise<Record<string, unknown>> {
  const tooLarge = () => new BadRequest(`the body must be at most ${MAX_BODY_BYTES} bytes`, 413);
  if (Number(request.headers['content-length']) > MAX_BODY_BYTES) throw tooLarge();
  const chunks: Buffer[] = [];
  let bytes = 0;
  try {
    for await (const chunk of request as AsyncIterable<Buffer>) {
      bytes += chunk.length;
      if (bytes > MAX_BODY_BYTES) throw tooLarge();
      chunks.push(chunk);
    }
  } catch (error) {
    if (error instanceof BadRequest) throw error;
    // The client went away mid-body (or was cut off at the request timeout): its fault, not ours.
    throw new BadRequest('the request body did not arrive');
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return {};
  try {
    const body: unknown = JSON.parse(text);
    if (body && typeof body === 'object' && !Array.isArray(body)) return body as Record<string, unknown>;
  } catch {
    // fall through
  }
  throw new BadRequest('the body must be a JSON object');
}

/** `set`'s fields: lanes (1..256) and batchSize (1..2147483647), each optional, numbers or numeric strings. */
function paceOf(body: Record<string, unknown>): MigrationPace {
  const pace: MigrationPace = {};
  const integer = (key: string, max: number): number | undefined => {
    const value = body[key];
    if (value === undefined || value === null || value === '') return undefined;
    // Only numbers and strings: Number() of an object from JSON can throw (no usable valueOf or toString).
    const number = typeof value === 'number' || typeof value === 'string' ? Number(value) : NaN;
    if (!Number.isInteger(number) || number < 1 || number > max)
      throw new BadRequest(`${key} must be a whole number from 1 to ${max}`);
    return number;
  };
  pace.maxParallelJobs = integer('lanes', MAX_LANES);
  pace.batchSize = integer('batchSize', INT4_MAX);
  if (pace.maxParallelJobs === undefined && pace.batchSize === undefined)
    throw new BadRequest('set needs lanes or batchSize');
  return pace;
}

/** A migration name from a path segment, percent-decoded; a malformed one is refused, never thrown. */
function nameOf(segment: string): string {
  let name;
  try {
    name = decodeURIComponent(segment);
  } catch {
    throw new BadRequest('malformed percent-encoding in the migration name');
  }
  // No name holds one (a text column cannot), and as a query parameter it would fail the query.
  if (name.includes('\u0000')) throw new BadRequest('a migration name cannot hold a NUL');
  return name;
}

/** JSON where bigints are strings (a browser's JSON.parse would round them). */
const json = (value: unknown) => JSON.stringify(value, (_, v: unknown) => (typeof v === 'bigint' ? String(v) : v));

/** A database the page reads: its name in a fleet (undefined for the one database), and its pool. */
interface Source {
  name: string | undefined;
  db: pg.Pool | pg.ClientBase;
}

export function createStatusPage({
  db,
  databases,
  token,
  log,
  schedules = [],
  rehearse,
  mask = (text) => text,
}: StatusPageOptions): StatusPage {
  const sources: Source[] = databaseList({ db, databases });
  if (sources.length === 0) throw new Error('a status page needs db or databases');
  const targets = sources.map(({ name }) => ({ name, url: '' }));
  /** The database and migration a path segment names (`database/name` in a fleet of several). */
  const locate = (segment: string): { source: Source; name: string; shown: string } => {
    const shown = nameOf(segment);
    if (!databases) return { source: sources[0]!, name: shown, shown };
    const address = parseAddress(shown, targets);
    const source = sources.find((candidate) => candidate.name === address.database);
    if (!source) {
      throw new BadRequest(
        `name the database of ${JSON.stringify(shown)}: DATABASE/NAME, one of ${sources.map((x) => x.name).join(', ')}`,
        404,
      );
    }
    return { source, name: address.name, shown };
  };
  const expected = token ? Buffer.from(token) : undefined;
  const controls: Controls = { writable: Boolean(expected), rehearse: rehearse !== undefined };
  /** The migration being rehearsed from this page: one at a time (each holds two of the pool's connections). */
  let rehearsing: string | undefined;
  const authorized = (request: IncomingMessage): boolean => {
    const given = request.headers['x-bbm-token'];
    if (!expected || typeof given !== 'string') return false;
    const buffer = Buffer.from(given);
    return buffer.length === expected.length && timingSafeEqual(buffer, expected);
  };
  /** A browser sends Origin with a POST; it must be this server's own. */
  const sameOrigin = (request: IncomingMessage): boolean => {
    const origin = request.headers.origin;
    if (origin === undefined) return true; // not a browser (curl, a script): the token alone decides
    try {
      return new URL(origin).host === request.headers.host;
    } catch {
      return false;
    }
  };

  const send = (response: ServerResponse, status: number, body: string, type: string, close = false) => {
    response.writeHead(status, {
      'content-type': type,
      'cache-control': 'no-store',
      // The page's own script only; no framing by other sites.
      'content-security-policy':
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
      'x-content-type-options': 'nosniff',
      // A body left unread (too large, or never looked at) must not be taken for the next request.
      ...(close && { connection: 'close' }),
    });
    response.end(body);
  };
  /** Runs a route's answer: a BadRequest becomes its 4xx, anything else rejects (a 500 by the server). */
  const answer = async (response: ServerResponse, asJson: boolean, handle: () => Promise<void>): Promise<void> => {
    try {
      await handle();
    } catch (error) {
      if (!(error instanceof BadRequest)) throw error;
      if (response.destroyed) return; // nobody left to answer
      if (asJson) send(response, error.status, json({ error: error.message }), 'application/json', true);
      else send(response, error.status, `${error.message}\n`, 'text/plain; charset=utf-8', true);
    }
  };

  const cannotRehearse = () =>
    new BadRequest(
      'this status page cannot rehearse: it has no work functions (serve it with --config: bbm run, bbm dashboard)',
      409,
    );
  /**
   * Rehearses the migration, one at a time from this page (a second is answered 409), stopped
   * when the client goes away or after PAGE_REHEARSAL_LIMIT_MS; a refusal is answered 4xx with
   * its reason. The outcome is logged either way.
   */
  const rehearseFromPage = async (
    source: Source,
    name: string,
    response: ServerResponse,
    logged: (result: Record<string, unknown>) => void,
  ): Promise<RehearsalReport> => {
    if (!rehearse) throw cannotRehearse();
    const { work, runTimeoutMs } = rehearse;
    const pool = rehearse.pool ?? (source.db as pg.Pool);
    if (rehearsing !== undefined)
      throw new BadRequest(`a rehearsal of ${rehearsing} is running from this page: one at a time`, 409);
    rehearsing = name;
    // One controller, aborted by a plain timer or the client leaving (as notifier.ts bounds a
    // request, rather than AbortSignal.any with AbortSignal.timeout).
    const stop = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      stop.abort();
    }, PAGE_REHEARSAL_LIMIT_MS);
    const onClose = () => stop.abort();
    response.once('close', onClose);
    try {
      const report = await rehearseMigration({
        pool,
        work,
        name,
        runTimeoutMs,
        signal: stop.signal,
        ...(log && { logger: log }),
      });
      logged({ changed: true, samples: report.samples.length, failed: report.failed, projection: report.projection });
      return report;
    } catch (error) {
      if (!(error instanceof RehearseError)) throw error;
      logged({ changed: false, refused: error.code, error: error.message });
      const message =
        error.code === 'stopped' && timedOut
          ? `${error.message}: it took over ${PAGE_REHEARSAL_LIMIT_MS / 1000} s, the page's limit (bbm rehearse has none)`
          : error.message;
      throw new BadRequest(message, REHEARSE_ERROR_STATUS[error.code]);
    } finally {
      clearTimeout(timer);
      response.off('close', onClose);
      rehearsing = undefined;
    }
  };

  return (request, response) => {
    // The target as sent, up to its query: URL parsing would throw on some of what clients send.
    const path = (request.url ?? '/').split('?', 1)[0]!;
    const method = request.method ?? 'GET';

    if (method === 'POST') {
      const match = /^\/api\/migrations\/([^/]+)\/(pause|resume|retry|approve|delete|rehearse|set)$/.exec(path);
      if (!match) return false;
      const action = match[2] as Action;
      return answer(response, true, async () => {
        const { source, name, shown } = locate(match[1]!);
        const who = { remote: request.socket.remoteAddress, user_agent: request.headers['user-agent'] };
        if (!expected) {
          send(
            response,
            403,
            json({ error: 'the status page is read-only: start it with --dashboard-token' }),
            'application/json',
            true,
          );
          return;
        }
        if (!sameOrigin(request) || !authorized(request)) {
          log?.warn({ ...who, action, bbm_name: name }, 'status page: action refused (bad token or origin)');
          send(
            response,
            403,
            json({ error: 'refused: a valid operator token (x-bbm-token) from this page is needed' }),
            'application/json',
            true,
          );
          return;
        }
        const body = await readBody(request);
        if (action !== 'set') {
          // The page shows only the actions a state allows; the server holds to the same table.
          if (action === 'rehearse' && !rehearse) throw cannotRehearse();
          const [report] = await migrationReports(source.db, { name });
          if (!report) throw new BadRequest(`no migration named ${JSON.stringify(shown)}`, 404);
          const valid = actionsFor(report.status, controls.rehearse);
          if (!valid.includes(action))
            throw new BadRequest(
              `${shown} is ${report.status}: ${action} is not valid now (valid: ${valid.join(', ') || 'none'})`,
              409,
            );
        }
        if (action === 'rehearse') {
          const report = await rehearseFromPage(source, name, response, (result) =>
            log?.info({ ...who, action, bbm_name: shown, result }, `status page: ${action} ${shown}`),
          );
          send(response, 200, json({ action, name: shown, changed: true, report }), 'application/json');
          return;
        }
        const result = await act(
          source.db,
          action,
          name,
          shown,
          body,
          `status page (${who.remote ?? 'unknown address'})`,
        );
        log?.info({ ...who, action, bbm_name: shown, result }, `status page: ${action} ${shown}`);
        send(response, result.changed ? 200 : 409, json(result), 'application/json');
      });
    }
    if (method !== 'GET' && method !== 'HEAD') return false;

    if (path === '/') {
      return answer(response, false, async () => {
        const reads = await readEach(sources, async (source) => {
          const [reports, workers, passes] = await Promise.all([
            migrationReports(source.db),
            liveWorkers(source.db, LIVE_WORKER_WINDOW_MS),
            scheduleReports(source.db, schedulesIn(schedules, source.name)),
          ]);
          const prefix = (name: string) => addressText(source.name, name);
          return {
            reports: reports.map((report) => shownReport(source.name, report)),
            workers,
            passes: passes.map((pass) => ({ ...pass, name: prefix(pass.name) })),
          };
        });
        const read = reads.flatMap((r) => (r.read ? [r.read] : []));
        const health = databases
          ? reads.map(({ name, error }) => ({
              name: name!,
              up: !error,
              error: error === undefined ? undefined : mask(error),
            }))
          : [];
        send(
          response,
          200,
          listPage(
            read.flatMap((r) => r.reports),
            read.flatMap((r) => r.workers),
            read.flatMap((r) => r.passes),
            controls,
            health,
          ),
          'text/html; charset=utf-8',
        );
      });
    }
    if (path === '/api/migrations') {
      return answer(response, true, async () => {
        const reads = await readEach(sources, async (source) =>
          (await migrationReports(source.db)).map((report) => shownReport(source.name, report)),
        );
        send(response, 200, json(reads.flatMap((r) => r.read ?? [])), 'application/json');
      });
    }
    if (path === '/status-page.js') {
      send(response, 200, CLIENT_SCRIPT, 'text/javascript; charset=utf-8');
      return Promise.resolve();
    }
    const detail = /^\/migrations\/([^/]+)$/.exec(path);
    if (detail) {
      return answer(response, false, async () => {
        const { source, name, shown } = locate(detail[1]!);
        const [report] = await migrationReports(source.db, { name });
        if (!report) {
          send(response, 404, `no migration named ${html(JSON.stringify(shown))}\n`, 'text/plain; charset=utf-8');
          return;
        }
        const [jobs, timeline] = await Promise.all([
          recentJobs(source.db, report.id),
          jobTimeline(source.db, report.id),
        ]);
        send(
          response,
          200,
          migrationPage(shownReport(source.name, report), jobs, timeline, controls),
          'text/html; charset=utf-8',
        );
      });
    }
    return false;
  };
}

/** Who approved from the page: the `by` the operator typed (up to 100 characters), else the fallback. */
function approverOf(body: Record<string, unknown>, fallback: string): string {
  const by = body.by;
  if (by === undefined || by === null || (typeof by === 'string' && by.trim() === '')) return fallback;
  if (typeof by !== 'string' || by.length > 100) throw new BadRequest('by must be a name of up to 100 characters');
  return by.trim();
}

/**
 * Each database's read, at once; with several databases, one that fails is reported down (its
 * error as the page shows it) and the others are still shown. With one, its failure is the page's.
 */
async function readEach<T>(
  sources: readonly Source[],
  read: (source: Source) => Promise<T>,
): Promise<{ name: string | undefined; read?: T; error?: string }[]> {
  if (sources.length === 1 && sources[0]!.name === undefined)
    return [{ name: undefined, read: await read(sources[0]!) }];
  return (await readEachDatabase(sources, read)).map(({ source, value, error }) => ({
    name: source.name,
    read: value,
    error: error?.message,
  }));
}

async function act(
  db: pg.Pool | pg.ClientBase,
  action: Exclude<Action, 'rehearse'>,
  name: string,
  shown: string,
  body: Record<string, unknown>,
  fallbackApprover: string,
): Promise<{ action: Action; name: string; changed: boolean }> {
  const done = (changed: boolean) => ({ action, name: shown, changed });
  switch (action) {
    case 'set':
      return done(await setMigrationPace(db, name, paceOf(body)));
    case 'pause':
      return done((await pause(db, name)).length > 0);
    case 'resume':
      return done((await resume(db, name)).length > 0);
    case 'retry':
      return done((await retryMigration(db, name)) !== null);
    case 'approve':
      return done((await approveMigration(db, name, approverOf(body, fallbackApprover))) !== null);
    case 'delete':
      // The page's confirmation, made part of the request: a stray POST deletes nothing.
      if (body.confirm !== shown) throw new BadRequest('delete needs {"confirm": "<the migration name>"}');
      return done((await deleteMigration(db, name)).deleted);
  }
}
