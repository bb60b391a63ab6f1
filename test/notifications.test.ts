/**
 * Webhook notifications: each event sent once however many workers run, retried with a backoff,
 * never in the way of jobs, and with nothing in it but what migrations' rows say. The receiver is
 * a server the test runs on 127.0.0.1.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import type pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveNotify } from '../src/bbm/config.ts';
import { ConfigError } from '../src/bbm/errors.ts';
import { createMetrics } from '../src/bbm/metrics.ts';
import type { NotifyTarget, Work } from '../src/bbm/types.ts';
import type { Worker } from '../src/bbm/worker.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { createPool } from '../src/store/db.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, range, testWorker, touch } from './support/engine.ts';
import { waitFor } from './support/processes.ts';

type Reply = 'ok' | 'fail' | 'hang';

interface Receiver {
  url: string;
  /** Every request's body, parsed, in the order they came, with what it was answered. */
  requests: { body: Record<string, unknown>; raw: string; reply: Reply }[];
  /** The bodies answered 200. */
  delivered(): Record<string, unknown>[];
  close(): Promise<void>;
}

/** A webhook receiver on 127.0.0.1 (port 0: the kernel picks a free one). `reply(n)` decides the n-th request's fate. */
async function receiver(reply: (n: number) => Reply = () => 'ok'): Promise<Receiver> {
  const requests: Receiver['requests'] = [];
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const fate = reply(requests.length + 1);
      requests.push({ body: JSON.parse(raw) as Record<string, unknown>, raw, reply: fate });
      if (fate === 'hang') return;
      response.writeHead(fate === 'ok' ? 200 : 500).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hook?secret=s3cr3t`,
    requests,
    delivered: () => requests.filter((r) => r.reply === 'ok').map((r) => r.body),
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

const eventOf = (body: Record<string, unknown>) => `${(body.migration as { name: string }).name}:${String(body.event)}`;

const failing: Work = {
  name: 'test.fail',
  async do() {
    throw new Error('the work function broke');
  },
};

describe('notifications', () => {
  const db = useTestDatabase();
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  /** A worker on a pool of its own, running its loop until the test ends. */
  function startWorker(params: Omit<Parameters<typeof testWorker>[1], 'work'> & { work?: Work[] }): Worker {
    const pool = createPool({ connectionString: db().url, max: 3 });
    const worker = testWorker(pool, { work: [touch, failing], notifyCheckMs: 50, ...params });
    const loop = worker.run();
    cleanups.push(async () => {
      await worker.stop();
      await loop;
      await pool.end();
    });
    return worker;
  }

  async function useReceiver(reply?: (n: number) => Reply): Promise<Receiver> {
    const server = await receiver(reply);
    cleanups.push(() => server.close());
    return server;
  }

  const rows = async (pool: pg.Pool) =>
    (
      await pool.query<{ event: string; attempts: number; sent: boolean; last_error: string | null }>(
        'SELECT event, attempts, sent_at IS NOT NULL AS sent, last_error FROM batched_background_migration_notifications ORDER BY id',
      )
    ).rows;

  it('sends each event exactly once with three workers running', async () => {
    const { pool, url: databaseUrl } = db();
    const server = await useReceiver();
    await createItems(pool, 'items', range(1, 300));
    await enqueue(pool, { name: 'fine', work: touch.name, table: 'items', batchSize: 50 });
    await enqueue(pool, { name: 'broken', work: failing.name, table: 'items', batchSize: 50 });
    await enqueue(pool, { name: 'waiting', work: touch.name, table: 'items', batchSize: 50, status: 5 });
    const held = await enqueue(pool, { name: 'stuck', work: touch.name, table: 'items', batchSize: 50 });
    await pool.query(
      `UPDATE batched_background_migrations SET on_hold_until = now() + interval '1 hour', hold_reason = 'replay lag 80 MB'
       WHERE id = $1`,
      [held],
    );
    const notify: NotifyTarget[] = [{ url: server.url, heldForMs: 300, unfinalizedForMs: 800 }];
    const token = 'operator-token-0123456789abcdef';
    process.env.BBM_DASHBOARD_TOKEN = token;
    cleanups.push(async () => {
      delete process.env.BBM_DASHBOARD_TOKEN;
    });
    for (let i = 0; i < 3; i += 1) startWorker({ notify, maxAttempts: 1 });

    const expected = [
      'broken:failed',
      'broken:started',
      'fine:finished',
      'fine:not_finalized',
      'fine:started',
      'stuck:held',
      'waiting:awaiting_approval',
    ];
    await waitFor(async () => server.requests.length >= expected.length, 'seven notifications', 15_000);
    // Many more rounds of all three workers: none may send anything again.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(server.requests.map((r) => eventOf(r.body)).sort()).toEqual(expected);
    expect((await rows(pool)).every((r) => r.sent && r.attempts === 1)).toBe(true);

    const failed = server.requests.find((r) => eventOf(r.body) === 'broken:failed')!.body;
    expect(failed.error).toEqual({
      code: 'max_job_retry',
      message: expect.stringContaining('the work function broke'),
    });
    expect(failed.migration).toMatchObject({ name: 'broken', status: 'failed', table: 'items', work: 'test.fail' });
    const stuck = server.requests.find((r) => eventOf(r.body) === 'stuck:held')!.body;
    expect(stuck).toMatchObject({ holdReason: 'replay lag 80 MB', text: expect.stringContaining('stuck held') });
    expect(stuck.heldForMs).toBeGreaterThanOrEqual(300);

    // Built from migrations' rows only: no database URL, password or operator token.
    const password = new URL(databaseUrl).password;
    for (const { raw } of server.requests) {
      expect(raw).not.toContain(databaseUrl);
      expect(raw).not.toContain(new URL(databaseUrl).host);
      if (password) expect(raw).not.toContain(password);
      expect(raw).not.toContain(token);
      expect(raw).not.toContain('s3cr3t');
    }
    const stored = await pool.query<{ all: string }>(
      "SELECT string_agg(target || payload::text, ' ') AS all FROM batched_background_migration_notifications",
    );
    expect(stored.rows[0]!.all).not.toContain('s3cr3t');
  });

  it('retries a receiver that fails twice, and delivers on the third attempt, once', async () => {
    const { pool } = db();
    const server = await useReceiver((n) => (n <= 2 ? 'fail' : 'ok'));
    await createItems(pool, 'items', range(1, 10));
    await enqueue(pool, { name: 'waiting', work: touch.name, table: 'items', batchSize: 5, status: 5 });
    const metrics = createMetrics();
    startWorker({ notify: [{ url: server.url, events: ['awaiting_approval'] }], observers: [metrics.observer] });

    const started = Date.now();
    await waitFor(async () => server.delivered().length > 0, 'the third attempt', 15_000);
    const took = Date.now() - started;
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(server.requests.map((r) => r.reply)).toEqual(['fail', 'fail', 'ok']);
    // Backoff: 1 s, then 2 s (±20 %), before the third.
    expect(took).toBeGreaterThanOrEqual(2_300);
    expect(await rows(pool)).toEqual([{ event: 'awaiting_approval', attempts: 3, sent: true, last_error: null }]);
    const counter = await metrics.registry.getSingleMetric('bbm_notifications_total')?.get();
    const count = (result: string) =>
      counter?.values.find((v) => v.labels.result === result && v.labels.event === 'awaiting_approval')?.value;
    expect([count('failed'), count('sent')]).toEqual([2, 1]);
  });

  it('gives a notification up after maxAttempts, and logs it', async () => {
    const { pool } = db();
    const server = await useReceiver(() => 'fail');
    await createItems(pool, 'items', range(1, 10));
    await enqueue(pool, { name: 'waiting', work: touch.name, table: 'items', batchSize: 5, status: 5 });
    const lines: string[] = [];
    const logger = pino({ level: 'error' }, { write: (line: string) => void lines.push(line) });
    startWorker({ notify: [{ url: server.url, events: ['awaiting_approval'], maxAttempts: 2 }], logger });
    await waitFor(
      async () => (await rows(pool))[0]?.attempts === 2 && server.requests.length === 2,
      'two attempts',
      10_000,
    );
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect(server.requests).toHaveLength(2);
    const { rows: given } = await pool.query(
      'SELECT sent_at, next_attempt_at, last_error FROM batched_background_migration_notifications',
    );
    expect(given).toEqual([{ sent_at: null, next_attempt_at: null, last_error: 'HTTP 500' }]);
    expect(lines.map((line) => JSON.parse(line).msg)).toEqual([
      'notification given up after 2 attempts: waiting awaiting_approval',
    ]);
    expect(lines.join('')).not.toContain('s3cr3t');
  });

  it('a receiver that never answers changes nothing for the jobs; the send is retried after its timeout', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 3_000));
    // 100 jobs of 10 ms or more: long enough for sends to hang and time out while it drains.
    const slowTouch: Work = {
      name: 'test.slow_touch',
      async do(job) {
        await touch.do(job);
        await new Promise((resolve) => setTimeout(resolve, 10));
      },
    };
    const drainTime = async (name: string, notify?: NotifyTarget[]) => {
      await pool.query('UPDATE items SET touched = 0');
      await enqueue(pool, { name, work: slowTouch.name, table: 'items', batchSize: 30 });
      const started = Date.now();
      const worker = testWorker(pool, { work: [slowTouch], notifyCheckMs: 50, ...(notify && { notify }) });
      const loop = worker.run();
      cleanups.push(async () => {
        await worker.stop();
        await loop;
      });
      await waitFor(
        async () =>
          (
            await pool.query('SELECT 1 FROM batched_background_migrations WHERE name = $1 AND status = $2', [
              name,
              MigrationStatus.finished,
            ])
          ).rowCount === 1,
        `${name} to finish`,
        15_000,
      );
      const took = Date.now() - started;
      await worker.stop();
      return took;
    };
    const usual = await drainTime('without_notify');
    // Recent enough to be told of: out of the way of the one the receiver is to see.
    await pool.query("DELETE FROM batched_background_migrations WHERE name = 'without_notify'");
    const server = await useReceiver(() => 'hang');
    const notify: NotifyTarget[] = [{ url: server.url, events: ['started'], timeoutMs: 300 }];
    const withHang = await drainTime('with_hanging_receiver', notify);
    // The same 100 jobs either way; sends hung and timed out meanwhile, and no job waited for them.
    expect(server.requests.length).toBeGreaterThanOrEqual(1);
    expect(withHang).toBeLessThan(usual * 1.5 + 500);

    // Retried after the timeout (and a backoff of about 1 s): the receiver saw the same event again.
    const worker = testWorker(pool, { work: [slowTouch], notifyCheckMs: 50, notify });
    const loop = worker.run();
    cleanups.push(async () => {
      await worker.stop();
      await loop;
    });
    const row = await waitFor(
      async () => {
        const [first] = await rows(pool);
        return first && first.attempts >= 2 && first.last_error === 'no answer within 300 ms' && first;
      },
      'a retry that timed out',
      10_000,
    );
    expect(row).toMatchObject({ event: 'started', sent: false });
    expect(server.requests.length).toBeGreaterThanOrEqual(2);
    expect(new Set(server.requests.map((r) => eventOf(r.body)))).toEqual(new Set(['with_hanging_receiver:started']));
  });

  it("sends Slack's format: { text } naming the migration and the event", async () => {
    const { pool } = db();
    const server = await useReceiver();
    await createItems(pool, 'items', range(1, 10));
    await enqueue(pool, { name: 'reindex_orders', work: touch.name, table: 'items', batchSize: 5, status: 5 });
    startWorker({ notify: [{ url: server.url, format: 'slack' }] });
    await waitFor(async () => server.requests.length > 0, 'a notification', 10_000);
    expect(server.requests[0]!.body).toEqual({
      text: 'pg-bbm: migration reindex_orders awaits approval (`bbm approve`)',
    });
  });

  it('refuses bad notify options with a ConfigError that never shows the URL', () => {
    const url = 'https://hooks.example.com/services/T000/B000/secretpart';
    const refused: [unknown, RegExp][] = [
      [{ url: 'https://hooks.example.com' }, /notify must be an array/],
      [[{ url: 'ftp://user:secretpart@example.com/hook' }], /notify\[0\]\.url must be an http or https URL/],
      [[{ url: 'not a url secretpart' }], /notify\[0\]\.url must be an http or https URL/],
      [[{ url: 42 }], /notify\[0\]\.url must be an http or https URL/],
      [[{ url, events: ['exploded'] }], /notify\[0\]\.events: unknown event "exploded"/],
      [[{ url, events: [] }], /notify\[0\]\.events must be a non-empty array/],
      [[{ url, format: 'xml' }], /notify\[0\]\.format must be "json" or "slack"/],
      [[{ url, timeoutMs: 0 }], /notify\[0\]\.timeoutMs must be an integer from 100/],
      [[{ url, maxAttempts: 1.5 }], /notify\[0\]\.maxAttempts must be an integer/],
      [[{ url, heldForMs: -1 }], /notify\[0\]\.heldForMs must be an integer/],
      [[{ url, evnets: ['failed'] }], /notify\[0\]: unknown option "evnets"/],
      [[{ url }, { url }], /notify\[1\] repeats an earlier webhook/],
      [[null], /notify\[0\] must be an object/],
    ];
    for (const [notify, message] of refused) {
      let thrown: unknown;
      try {
        resolveNotify(notify);
      } catch (error) {
        thrown = error;
      }
      expect(thrown, JSON.stringify(notify)).toBeInstanceOf(ConfigError);
      expect((thrown as Error).message).toMatch(message);
      expect((thrown as Error).message).not.toContain('secretpart');
    }
    expect(() => testWorker(db().pool, { work: [touch], notify: [{ url, format: 'xml' as 'json' }] })).toThrow(
      ConfigError,
    );
    const [target] = resolveNotify([{ url }]);
    expect(target).toMatchObject({ format: 'json', timeoutMs: 10_000, heldForMs: 3_600_000, maxAttempts: 10 });
    expect(target!.events).toHaveLength(6);
  });
});
