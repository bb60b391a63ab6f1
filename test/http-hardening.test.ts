/**
 * No request can kill a server: `bbm dashboard` and `bbm run --metrics-port`, run as users run
 * them (the compiled command), answer malformed paths and percent-encodings, wrong methods, bad
 * JSON, oversized headers and bodies with a 4xx, and keep serving; `bbm run` keeps working.
 */
import { Writable } from 'node:stream';
import { connect } from 'node:net';
import fc from 'fast-check';
import { pino } from 'pino';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startOpsServer } from '../src/bbm/ops-server.ts';
import { createStatusPage } from '../src/bbm/status-page.ts';
import { createPool } from '../src/store/db.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, migrationRow, range } from './support/engine.ts';
import { createJobLog, startBbm, TEST_CONFIG, waitFor, type BbmProcess } from './support/processes.ts';
import { httpRequest, rawRequest } from './support/raw-http.ts';

const TOKEN = 'operator-token-0123456789';

/** Starts the compiled `bbm` with `args` and waits for the port its server printed or logged. */
async function startServing(args: string[], env: Record<string, string>): Promise<{ proc: BbmProcess; port: number }> {
  const proc = startBbm(args, env);
  onTestFinished(() => void proc.child.kill('SIGKILL'));
  const port = await waitFor(async () => {
    // `bbm dashboard` prints "status page on http://127.0.0.1:PORT/"; `bbm run` logs "serving metrics" with its url.
    const match = /http:\/\/127\.0\.0\.1:(\d+)\/(?:"|\s|metrics)/.exec(proc.output());
    if (proc.child.exitCode !== null) throw new Error(`bbm exited early: ${proc.output()}`);
    return match ? Number(match[1]) : undefined;
  }, `bbm ${args[0]} to serve`);
  return { proc, port };
}

/** The requests of issue 27, on the page's real routes: each threw URIError out of the handler. */
const MALFORMED = [
  httpRequest('GET', '/migrations/%E0%A4%A'),
  httpRequest('GET', '/migrations/%'),
  httpRequest('POST', '/api/migrations/%/pause', { headers: [`x-bbm-token: ${TOKEN}`] }),
  httpRequest('POST', '/api/migrations/%E0%A4%A/set', {
    headers: [`x-bbm-token: ${TOKEN}`, 'content-type: application/json'],
    body: '{"lanes": 2}',
  }),
];

async function expectAlive(proc: BbmProcess, port: number): Promise<void> {
  const health = await rawRequest(port, httpRequest('GET', '/healthz'));
  expect(proc.child.exitCode, proc.output()).toBeNull();
  expect(health.status, health.text).toBe(200);
}

describe('hostile requests to the compiled bbm', () => {
  const db = useTestDatabase();

  for (const command of ['dashboard', 'run'] as const) {
    it(`bbm ${command} answers malformed percent-encodings with 400 and keeps serving`, async () => {
      const { pool, url } = db();
      await createJobLog(pool);
      const args =
        command === 'dashboard'
          ? ['dashboard', '--port', '0', '--dashboard-token', TOKEN]
          : ['run', '--config', TEST_CONFIG, '--metrics-port', '0', '--dashboard-token', TOKEN, '--log-format', 'json'];
      const { proc, port } = await startServing(args, { DATABASE_URL: url, BBM_LOG_LEVEL: 'info' });
      for (const request of MALFORMED) {
        const response = await rawRequest(port, request);
        expect(response.status, `${request.toString('latin1')}\n${response.text}`).toBe(400);
        await expectAlive(proc, port);
      }
      if (command === 'run') {
        // The worker still works: a migration enqueued now is run to the end.
        await createItems(pool, 'items', range(1, 50));
        await enqueue(pool, { name: 'after', work: 'test.touch', table: 'items', batchSize: 10 });
        await waitFor(
          async () => (await migrationRow(pool, 'after'))?.status === MigrationStatus.finished,
          'the migration enqueued after the requests to finish',
        );
      }
      proc.child.kill('SIGTERM');
      expect(await proc.exited).toEqual({ code: 0, signal: null });
    });
  }
});

/** Pieces of a path: the percent-encodings that break decoding, traversal, raw bytes, and plain text. */
const piece = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.constantFrom(
      '%',
      '%E0%A4%A',
      '%E0%A4',
      '%ZZ',
      '%0',
      '%00',
      '%C0%80',
      '%ED%A0%80', // a UTF-16 surrogate, which UTF-8 may not encode
      '%FF%FE',
      '%25',
      '%2F',
      '%F0%9F%98%80',
      '..',
      '.',
      '/',
      '//',
      '?',
      '?name=%',
      '#',
      '[',
      ';',
      'present',
      'present',
    ),
  },
  { weight: 3, arbitrary: fc.string({ unit: fc.constantFrom(...'%0123456789ABCDEFabxz/.-_~'), maxLength: 12 }) },
  // Any character but CR, LF and space, which end the request line (those come in the garbage
  // below); sent as latin1, so one byte each.
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 8 }).map((text) => text.replace(/[\r\n ]/g, '')) },
);
const composedPath = fc
  .tuple(
    fc.constantFrom(
      '/',
      '/metrics',
      '/healthz',
      '/readyz',
      '/status-page.js',
      '/api/migrations',
      '/migrations/',
      '/api/migrations/',
      '*',
      'http://127.0.0.1/migrations/',
      '//[',
      '',
    ),
    fc.array(piece, { maxLength: 3 }),
    fc.constantFrom('', '/pause', '/resume', '/retry', '/approve', '/delete', '/set', '/', '?x=1'),
  )
  .map(([prefix, pieces, suffix]) => `${prefix}${pieces.join('')}${suffix}` || '/');
/** The real routes, so that the deeper handlers (the page's queries and actions) see requests too. */
const routePath = fc.constantFrom(
  '/',
  '/metrics',
  '/healthz',
  '/readyz',
  '/api/migrations',
  '/status-page.js',
  '/migrations/present',
  '/api/migrations/present/pause',
  '/api/migrations/present/resume',
  '/api/migrations/present/retry',
  '/api/migrations/present/set',
  '/api/migrations/present/approve',
  '/api/migrations/absent/set',
  '/api/migrations/absent/delete',
);
const path = fc.oneof({ weight: 1, arbitrary: routePath }, { weight: 3, arbitrary: composedPath });
const method = fc.constantFrom(
  'GET',
  'HEAD',
  'POST',
  'POST',
  'POST',
  'PUT',
  'DELETE',
  'OPTIONS',
  'PATCH',
  'TRACE',
  'FOO',
);
const header = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.constantFrom(
      `x-bbm-token: ${TOKEN}`,
      `x-bbm-token: ${TOKEN}`,
      'x-bbm-token: wrong-token-0123456789',
      'x-bbm-token: ',
      'origin: http://127.0.0.1',
      'origin: null',
      'origin: http://evil.example',
      'origin: ::::',
      'content-type: application/json',
      'content-type: text/plain; charset=latin1',
      'expect: 100-continue',
      'user-agent: \u00ff\u0001',
    ),
  },
  // Oversized heads: Node's parser refuses them with 431.
  { weight: 1, arbitrary: fc.integer({ min: 17 * 1024, max: 64 * 1024 }).map((n) => `x-bbm-token: ${'a'.repeat(n)}`) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(
        fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/),
        fc.oneof(
          // Printable mostly; a control character makes Node's parser refuse the request (400).
          { weight: 4, arbitrary: fc.string({ maxLength: 60 }) },
          { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 60 }) },
        ),
      )
      .filter(([name]) => !['host', 'connection', 'content-length', 'transfer-encoding'].includes(name))
      .map(([name, value]) => `${name}: ${value.replace(/[\r\n]/g, '')}`),
  },
);
const body = fc.option(
  fc.oneof(
    fc.json({ maxDepth: 3 }),
    fc
      .record({ lanes: fc.jsonValue({ maxDepth: 2 }), batchSize: fc.jsonValue({ maxDepth: 2 }) }, { requiredKeys: [] })
      .map((value) => JSON.stringify(value)),
    fc.record({ lanes: fc.integer({ min: -5, max: 300 }) }).map((value) => JSON.stringify(value)),
    fc.string({ unit: 'binary', maxLength: 200 }),
    // Number() of this object throws: it has neither a callable valueOf nor toString.
    fc.constant('{"lanes":{"valueOf":1,"toString":2}}'),
    fc.constant('{"lanes":'),
    fc.integer({ min: 4097, max: 200_000 }).map((n) => `{"lanes":"${'9'.repeat(n)}"}`),
  ),
  { nil: undefined },
);
const request = fc.record({ method, path, headers: fc.array(header, { maxLength: 4 }), body });
/** Whole requests of arbitrary bytes: the parser's to refuse. */
const garbage = fc.oneof(
  // Not only line ends: the parser skips those before a request line and waits for one (a slow client).
  fc
    .string({ unit: 'binary', maxLength: 300 })
    .filter((text) => text.trim() !== '')
    .map((text) => Buffer.from(`${text}\r\n\r\n`, 'latin1')),
  fc
    .tuple(method, fc.string({ unit: 'binary-ascii', maxLength: 40 }))
    .map(([m, text]) => Buffer.from(`${m} /${text} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`, 'latin1')),
  fc.constantFrom(
    'GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n',
    'POST /api/migrations/x/set HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\nzz\r\n',
    'GET /healthz HTTP/9.9\r\n\r\n',
    'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
  ),
);

/** How many requests of each kind the corpus sends to each server. */
const RUNS = { requests: 1000, garbage: 200 };

/**
 * Sends the corpus: every well-formed request is answered without a 5xx (a 503 from /readyz
 * aside), and garbage at worst gets the connection closed; the process lives throughout. No
 * shrinking: once a request has killed the process every request fails, and the one to report
 * is the first.
 */
async function sendCorpus(proc: BbmProcess, port: number): Promise<{ sent: number; statuses: Map<number, number> }> {
  const statuses = new Map<number, number>();
  let sent = 0;
  const count = (status: number | null) => {
    sent += 1;
    if (status !== null) statuses.set(status, (statuses.get(status) ?? 0) + 1);
  };
  await fc.assert(
    fc.asyncProperty(request, async ({ method: m, path: p, headers, body: b }) => {
      const response = await rawRequest(port, httpRequest(m, p, { headers, body: b }), 5_000);
      count(response.status);
      const what = `${m} ${JSON.stringify(p)} ${JSON.stringify(headers).slice(0, 300)}\n${response.text.slice(0, 300)}`;
      expect(response.status, what).not.toBeNull();
      if (!(p.startsWith('/readyz') && response.status === 503)) expect(response.status, what).toBeLessThan(500);
      expect(proc.child.exitCode, proc.output()).toBeNull();
    }),
    { numRuns: RUNS.requests, endOnFailure: true },
  );
  await fc.assert(
    fc.asyncProperty(garbage, async (bytes) => {
      const response = await rawRequest(port, bytes, 5_000);
      count(response.status);
      if (response.status !== null) expect(response.status, bytes.toString('latin1')).toBeLessThan(500);
      expect(proc.child.exitCode, proc.output()).toBeNull();
    }),
    { numRuns: RUNS.garbage, endOnFailure: true },
  );
  return { sent, statuses };
}

describe('a corpus of generated hostile requests', () => {
  const db = useTestDatabase();

  for (const command of ['run', 'dashboard'] as const) {
    it(`leaves bbm ${command} serving${command === 'run' ? ' and its worker working' : ''}`, async () => {
      const { pool, url } = db();
      await createJobLog(pool);
      await createItems(pool, 'items', range(1, 50));
      // A migration the corpus may reach by name (pause, resume, set, its page): paused, so that
      // whatever the corpus does to it, it runs only if the corpus resumed it.
      await enqueue(pool, {
        name: 'present',
        work: 'test.touch',
        table: 'items',
        batchSize: 10,
        status: MigrationStatus.paused,
      });
      const args =
        command === 'dashboard'
          ? ['dashboard', '--port', '0', '--dashboard-token', TOKEN]
          : ['run', '--config', TEST_CONFIG, '--metrics-port', '0', '--dashboard-token', TOKEN, '--log-format', 'json'];
      const { proc, port } = await startServing(args, { DATABASE_URL: url, BBM_LOG_LEVEL: 'info' });

      const started = Date.now();
      const { sent, statuses } = await sendCorpus(proc, port);
      console.log(
        `bbm ${command}: ${sent} generated requests in ${Date.now() - started} ms; statuses ${JSON.stringify(Object.fromEntries(statuses))}`,
      );
      expect(sent).toBe(RUNS.requests + RUNS.garbage);
      // Nothing reached the last-resort catch.
      expect(proc.output()).not.toContain('http_handler_failed');

      await expectAlive(proc, port);
      expect((await rawRequest(port, httpRequest('GET', '/'))).status).toBe(200);
      expect((await rawRequest(port, httpRequest('GET', '/migrations/present'))).status).toBe(200);
      expect((await rawRequest(port, httpRequest('GET', '/readyz'))).status).toBe(200);
      if (command === 'run') {
        expect((await rawRequest(port, httpRequest('GET', '/metrics'))).status).toBe(200);
        await createItems(pool, 'more_items', range(1, 40));
        await enqueue(pool, { name: 'after', work: 'test.touch', table: 'more_items', batchSize: 10 });
        await waitFor(
          async () => (await migrationRow(pool, 'after'))?.status === MigrationStatus.finished,
          'the migration enqueued after the corpus to finish',
        );
      }
      proc.child.kill('SIGTERM');
      expect(await proc.exited).toEqual({ code: 0, signal: null });
    });
  }
});

/** A logger whose lines are kept, parsed, for the test to read. */
function capturedLog() {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'info' },
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        callback();
      },
    }),
  );
  return { log, lines };
}

describe('the ops server in process', () => {
  const db = useTestDatabase();

  it('answers slow clients 408 and drops them at its timeouts, serving others meanwhile', async () => {
    const { pool } = db();
    const { log, lines } = capturedLog();
    const server = await startOpsServer({
      page: createStatusPage({ db: pool, token: TOKEN }),
      db: pool,
      port: 0,
      log,
      headersTimeoutMs: 300,
      requestTimeoutMs: 600,
    });
    onTestFinished(() => server.close());
    // Headers that never end, and a body that never comes (it promises 100 bytes, sends 2).
    const slowHead = rawRequest(server.port, 'GET /healthz HTTP/1.1\r\nhost: x\r\n', 5_000);
    const slowBody = rawRequest(
      server.port,
      httpRequest('POST', '/api/migrations/x/set', {
        headers: [`x-bbm-token: ${TOKEN}`, 'content-length: 100'],
      }).toString('latin1') + '{"',
      5_000,
    );
    // Bytes dribbled one a time, each well within the timeout: the head as a whole is not.
    const dribble = new Promise<number>((resolve) => {
      const started = Date.now();
      const socket = connect(server.port, '127.0.0.1');
      const timer = setInterval(() => socket.write('x'), 50);
      socket.on('error', () => {});
      socket.on('close', () => {
        clearInterval(timer);
        resolve(Date.now() - started);
      });
      socket.write('GET /healthz HTTP/1.1\r\nx-slow: ');
    });
    expect((await rawRequest(server.port, httpRequest('GET', '/healthz'))).status).toBe(200);
    const [head, body, dribbled] = await Promise.all([slowHead, slowBody, dribble]);
    expect(head.status).toBe(408);
    expect(body.status).toBe(408);
    // Cut off at the timeout (checked every 100 ms here), long before the client's own 5 s.
    expect(head.ms).toBeLessThan(2_000);
    expect(body.ms).toBeLessThan(2_500);
    expect(dribbled).toBeLessThan(2_000);
    // A client that went away is not a failure of the server's.
    expect(lines).toEqual([]);
    expect((await rawRequest(server.port, httpRequest('GET', '/healthz'))).status).toBe(200);
  });

  it('answers a failure of its own 500 with a reference, and logs it once with an error code', async () => {
    const { url } = db();
    // A pool already ended: every query the page makes fails, as on a real outage of the pool.
    const ended = createPool({ connectionString: url, max: 1 });
    await ended.end();
    const { log, lines } = capturedLog();
    const server = await startOpsServer({ page: createStatusPage({ db: ended }), db: ended, port: 0, log });
    onTestFinished(() => server.close());
    const response = await rawRequest(server.port, httpRequest('GET', '/api/migrations'));
    expect(response.status).toBe(500);
    const ref = /internal error \(ref ([0-9a-f]{8})\)/.exec(response.text)?.[1];
    expect(ref, response.text).toBeDefined();
    expect(response.text).not.toMatch(/pool/i);
    expect(lines).toEqual([
      expect.objectContaining({
        level: 50,
        error_code: 'http_handler_failed',
        error_ref: ref,
        method: 'GET',
        url: '/api/migrations',
        err: expect.objectContaining({ message: expect.stringMatching(/pool/) }),
      }),
    ]);
    expect((await rawRequest(server.port, httpRequest('GET', '/healthz'))).status).toBe(200);
  });
});
