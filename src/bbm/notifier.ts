/**
 * The worker's notifications (the `notify` option): every `notifyCheckMs`, on a timer of its own
 * beside the lanes, one round in flight: it records the events it finds in migrations' rows
 * (store/notifications.ts: a row per event, target and occurrence, which any worker may try to
 * insert and only the first does) and sends the notifications due. A send claims its row under a
 * lease in one statement and holds no transaction while the request is in flight; a failed send
 * is retried with a backoff, up to the target's `maxAttempts`, then given up. Every failure is
 * logged and told to observers (metrics), never thrown: the lanes never wait for a webhook.
 */
import type pg from 'pg';
import {
  claimNotifications,
  detectNotifications,
  recordFailed,
  recordSent,
  type ClaimedNotification,
} from '../store/notifications.ts';
import { jittered } from './backoff.ts';
import type { ResolvedNotifyTarget } from './config.ts';
import type { Logger } from './log.ts';
import type { Tell } from './observe.ts';
import { Periodic } from './periodic.ts';
import type { NotifyEvent } from './types.ts';

/** Notifications claimed, and sent at once, in one round. */
const CLAIM_LIMIT = 10;
/** A lease outlasts the request's timeout by this much, for recording its result. */
const LEASE_MARGIN_MS = 30_000;
const RETRY_BASE_MS = 1_000;
const RETRY_CAP_MS = 600_000;

/** The wait before send `attempt + 1`: 1 s, 2 s, 4 s … up to 10 min, spread by ±20 %. */
export function retryDelayMs(attempt: number): number {
  return jittered(Math.min(RETRY_CAP_MS, RETRY_BASE_MS * 2 ** Math.min(attempt - 1, 30)), 0.2);
}

/** One line naming the migration and the event: Slack's `text`, and `text` in the JSON body. */
export function notificationText(payload: ClaimedNotification['payload'], event: string): string {
  const name = payload.migration.name;
  const detail = payload as { error?: { code?: string; message?: string }; holdReason?: string; heldForMs?: number };
  const what: Record<NotifyEvent, () => string> = {
    started: () => 'started',
    finished: () => 'finished',
    failed: () => `failed (${detail.error?.code ?? 'unknown'}): ${detail.error?.message ?? ''}`,
    held: () =>
      `held for ${Math.round((detail.heldForMs ?? 0) / 60_000)} min without progress: ${detail.holdReason ?? 'on hold'}`,
    not_finalized: () => 'finished but not finalized (its row is still there: finalize it, then `bbm delete` it)',
    awaiting_approval: () => 'awaits approval (`bbm approve`)',
  };
  return `pg-bbm: migration ${name} ${what[event as NotifyEvent]?.() ?? event}`;
}

export class Notifier {
  readonly #rounds: Periodic<void>;
  readonly #byId: Map<string, ResolvedNotifyTarget>;
  readonly #leaseMs: number;
  #timer: NodeJS.Timeout | undefined;
  /** Aborted by stop(): requests in flight end, and count as failed sends. */
  #stopping = new AbortController();

  constructor(
    private readonly db: () => pg.Pool,
    private readonly targets: readonly ResolvedNotifyTarget[],
    checkMs: number,
    private readonly log: Logger,
    private readonly tell: Tell,
  ) {
    // Counted from the start: a timer tick during a long round (a webhook slow to answer) shares it.
    this.#rounds = new Periodic(checkMs, () => this.#round(), 'start');
    this.#byId = new Map(targets.map((target) => [target.id, target]));
    this.#leaseMs = Math.max(...targets.map((target) => target.timeoutMs)) + LEASE_MARGIN_MS;
  }

  /** A round now, then one every `checkMs` until stopped. */
  start(): void {
    this.#stopping = new AbortController();
    this.#timer = setInterval(() => void this.#rounds.run(), this.#rounds.everyMs);
    this.#timer.unref();
    void this.#rounds.run();
  }

  /**
   * Stops, ending the requests in flight, once the round in flight has recorded them. Events are
   * looked for once more, and left for a worker that runs on: a `bbm run --until-done` records
   * the `finished` of the migration it finished.
   */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#stopping.abort();
    await this.#rounds.settled();
    await this.#detect();
  }

  async #detect(): Promise<void> {
    for (const target of this.targets) {
      try {
        await detectNotifications(this.db(), target);
      } catch (error) {
        this.log.warn({ err: error, notify_host: target.host }, 'could not look for notification events');
      }
    }
  }

  async #round(): Promise<void> {
    await this.#detect();
    if (this.#stopping.signal.aborted) return;
    let claimed: ClaimedNotification[];
    try {
      claimed = await claimNotifications(this.db(), {
        targets: [...this.#byId.keys()],
        leaseMs: this.#leaseMs,
        limit: CLAIM_LIMIT,
      });
    } catch (error) {
      this.log.warn({ err: error }, 'could not claim notifications');
      return;
    }
    await Promise.all(claimed.map((notification) => this.#send(notification)));
  }

  async #send(notification: ClaimedNotification): Promise<void> {
    const target = this.#byId.get(notification.target);
    if (!target) return;
    const { payload, attempt, id } = notification;
    const event = notification.event as NotifyEvent;
    const migration = payload.migration.name;
    const fields = { notify_event: event, migration, attempt, notify_host: target.host };
    const error = await post(target, notification, this.#stopping.signal);
    try {
      if (error === null) {
        await recordSent(this.db(), id, attempt);
        this.log.info(fields, `notification sent: ${migration} ${event}`);
        this.tell((observer) => observer.notification?.({ event, migration, result: 'sent' }));
        return;
      }
      // A send the worker's stop cut short is not the receiver's failure: never given up for it.
      const givenUp = !this.#stopping.signal.aborted && attempt >= target.maxAttempts;
      await recordFailed(this.db(), { id, attempt, error, retryInMs: givenUp ? null : retryDelayMs(attempt) });
      if (givenUp) {
        this.log.error(
          { ...fields, notify_error: error },
          `notification given up after ${attempt} attempts: ${migration} ${event}`,
        );
      } else {
        this.log.warn({ ...fields, notify_error: error }, `notification failed, to be retried: ${migration} ${event}`);
      }
      this.tell((observer) => observer.notification?.({ event, migration, result: givenUp ? 'given_up' : 'failed' }));
    } catch (recordError) {
      // The lease runs out and another round sends it again.
      this.log.warn({ ...fields, err: recordError }, 'could not record a notification sent');
    }
  }
}

/** POSTs the notification: null when the receiver answered 2xx, else why not (never the URL). */
async function post(
  target: ResolvedNotifyTarget,
  { payload, event }: ClaimedNotification,
  stopping: AbortSignal,
): Promise<string | null> {
  const text = notificationText(payload, event);
  const body = target.format === 'slack' ? { text } : { ...payload, text };
  // A plain timer, cleared when the request ends, rather than AbortSignal.any with
  // AbortSignal.timeout: with that composite, a request to a receiver that never answered was
  // once seen here (Node 20) to outlive its timeout by seconds.
  const abort = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    abort.abort();
  }, target.timeoutMs);
  const onStop = () => abort.abort();
  stopping.addEventListener('abort', onStop, { once: true });
  if (stopping.aborted) abort.abort();
  try {
    const response = await fetch(target.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'user-agent': 'pg-bbm' },
      body: JSON.stringify(body),
      redirect: 'manual',
      signal: abort.signal,
    });
    // Read to the end so the connection can be reused; the content does not matter.
    await response.arrayBuffer().catch(() => undefined);
    return response.ok ? null : `HTTP ${response.status}`;
  } catch (error) {
    if (timedOut) return `no answer within ${target.timeoutMs} ms`;
    if (stopping.aborted) return 'the worker stopped while sending';
    const e = error as Error & { cause?: { code?: string; message?: string } };
    return e.cause?.code ?? e.cause?.message ?? e.message;
  } finally {
    clearTimeout(timer);
    stopping.removeEventListener('abort', onStop);
  }
}
