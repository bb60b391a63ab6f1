/**
 * Error reports to Sentry (@sentry/node): every failed job attempt, every migration marked
 * failed and every unexpected run error, once each, tagged with `bbm_name`, `work`,
 * `error_code`, `correlation_id` and, in a fleet of several databases, `database`. Idle runs (no job, lock in use) are never reported.
 *
 * Sentry is set up without its default integrations: it installs no global handlers and
 * instruments nothing, so it changes nothing about how the process runs or exits.
 *
 * `@sentry/node` is an optional peer dependency (about 90 MB installed, and most users never set a
 * DSN): it is imported here, when a reporter is created, never at `import 'pg-bbm'`.
 */
import type * as SentryNode from '@sentry/node';
import { ConfigError } from './errors.ts';
import { CORRELATION_ID, jobFields, migrationFields } from './log.ts';
import type { RunResult, WorkerObserver } from './types.ts';

type SentryModule = typeof SentryNode;

async function importSentry(): Promise<SentryModule> {
  try {
    return await import('@sentry/node');
  } catch (cause) {
    const missing =
      (cause as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND' &&
      String((cause as Error).message).includes("'@sentry/node'");
    if (!missing) throw cause;
    throw new ConfigError(
      'a Sentry DSN is set but @sentry/node is not installed: run `npm install @sentry/node` (or unset SENTRY_DSN)',
      { cause },
    );
  }
}

export interface SentryOptions {
  dsn: string;
  environment?: string;
  release?: string;
  /** Text that must never leave the process (the database password): replaced by `***` in every event. */
  secrets?: readonly string[];
}

export interface SentryReporter {
  /** Add to a worker's `observers`. */
  observer: WorkerObserver;
  /** The observer of one database of a fleet, its events tagged `database`; undefined: as `observer`. */
  observerFor(database: string | undefined): WorkerObserver;
  /** Sends what is queued (waiting up to `timeoutMs`) and shuts the client down. */
  close(timeoutMs?: number): Promise<void>;
}

function scrubber(secrets: readonly string[]): <T>(event: T) => T {
  const needles = secrets.filter((secret) => secret.length >= 3);
  if (needles.length === 0) return (event) => event;
  return (event) => {
    let text = JSON.stringify(event);
    for (const needle of needles) text = text.split(JSON.stringify(needle).slice(1, -1)).join('***');
    return JSON.parse(text) as typeof event;
  };
}

const REPORTED: ReadonlySet<RunResult['outcome']> = new Set(['job_failed', 'migration_failed', 'error']);

/** Starts a Sentry client. Rejects with a ConfigError when `@sentry/node` is not installed. */
export async function createSentryReporter({
  dsn,
  environment,
  release,
  secrets = [],
}: SentryOptions): Promise<SentryReporter> {
  const Sentry = await importSentry();
  const scrub = scrubber(secrets);
  Sentry.initWithoutDefaultIntegrations({
    dsn,
    ...(environment !== undefined && { environment }),
    ...(release !== undefined && { release }),
    beforeSend: (event) => scrub(event),
    beforeBreadcrumb: (breadcrumb) => scrub(breadcrumb),
  });
  const observerAt = (database: string | undefined): WorkerObserver => ({
    run(result) {
      if (!REPORTED.has(result.outcome) || !result.error) return;
      const { migration, job } = result;
      const migrationTags = migration && migrationFields(migration);
      const statement: unknown = (result.error as { statement?: unknown }).statement;
      Sentry.captureException(result.error, {
        tags: {
          [CORRELATION_ID]: result.runId,
          outcome: result.outcome,
          ...(database !== undefined && { database }),
          ...(migrationTags && { bbm_name: migrationTags.bbm_name, work: migrationTags.work }),
          ...(result.errorCode && { error_code: result.errorCode }),
        },
        contexts: {
          bbm: {
            ...(migrationTags && { bbm_id: migrationTags.bbm_id }),
            // The store statement that failed, when one did (its name or text, never its values).
            ...(typeof statement === 'string' && { statement }),
            ...(job && jobFields(job)),
          },
        },
        // A migration fails once, for one reason: group its report by migration and code.
        ...(result.outcome === 'migration_failed' &&
          migration && { fingerprint: ['bbm-migration-failed', migration.name, result.errorCode ?? 'unknown'] }),
      });
    },
  });
  return {
    observer: observerAt(undefined),
    observerFor: observerAt,
    close: async (timeoutMs = 2_000) => {
      await Sentry.close(timeoutMs);
    },
  };
}
