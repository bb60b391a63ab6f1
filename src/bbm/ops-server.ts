/**
 * The HTTP endpoints of a running worker process: `/metrics` (Prometheus text), `/healthz` (the
 * process is alive) and `/readyz` (the database answers), and, when given, the status page (`/`,
 * `/migrations/<name>`, `/api/...`). Bound to 127.0.0.1 unless told otherwise.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { ping, type Queryable } from '../store/db.ts';
import type { StatusPage } from './status-page.ts';

export interface OpsServer {
  host: string;
  port: number;
  close(): Promise<void>;
}

export interface OpsServerOptions {
  /** Prometheus metrics; without them /metrics answers 404 (`bbm dashboard` serves the page only). */
  registry?: Registry | undefined;
  /** The status page (createStatusPage), on every other path. */
  page?: StatusPage | undefined;
  db: Queryable;
  /** 0 picks a free port. */
  port: number;
  host?: string;
  /** How long /readyz waits for the database. */
  readyTimeoutMs?: number;
}

export async function startOpsServer({
  registry,
  page,
  db,
  port,
  host = '127.0.0.1',
  readyTimeoutMs = 2_000,
}: OpsServerOptions): Promise<OpsServer> {
  const server = createServer((request, response) => {
    const reply = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      response.writeHead(status, { 'content-type': type }).end(body);
    };
    const path = (request.url ?? '/').split('?', 1)[0];
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      if (page?.(request, response)) return;
      return reply(405, 'method not allowed\n');
    }
    switch (path) {
      case '/metrics':
        if (!registry) return reply(404, 'no metrics here\n');
        registry.metrics().then(
          (text) => reply(200, text, registry.contentType),
          (error: unknown) => reply(500, `metrics failed: ${(error as Error).message}\n`),
        );
        return;
      case '/healthz':
        return reply(200, 'ok\n');
      case '/readyz': {
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${readyTimeoutMs} ms`)), readyTimeoutMs);
        });
        Promise.race([ping(db), timeout])
          .then(
            () => reply(200, 'ready\n'),
            (error: unknown) => reply(503, `database unreachable: ${(error as Error).message}\n`),
          )
          .finally(() => clearTimeout(timer));
        return;
      }
      default:
        if (page?.(request, response)) return;
        return reply(404, 'not found: try /metrics, /healthz or /readyz\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  return {
    host,
    port: address.port,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}
