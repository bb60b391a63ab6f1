/**
 * No request can kill a server: `bbm dashboard` and `bbm run --metrics-port`, run as users run
 * them (the compiled command), answer malformed paths and percent-encodings, wrong methods, bad
 * JSON, oversized headers and bodies with a 4xx, and keep serving; `bbm run` keeps working.
 */
import { describe, expect, it, onTestFinished } from 'vitest';
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
