/**
 * The HTTP endpoints of a running worker process: `/metrics` (Prometheus text), `/healthz` (the
 * process is alive) and `/readyz` (a database answers), and, when given, the status page (`/`,
 * `/migrations/<name>`, `/api/...`). Bound to 127.0.0.1 unless told otherwise.
 *
 * It shares the process with the worker, so no request may take the process down: slow clients
 * are cut off by timeouts, oversized headers are refused by Node's parser (431), and anything a
 * handler throws, synchronously or later, ends in one last-resort catch that answers 500 and logs
 * the failure once, with a reference the response also carries.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { ping, type Queryable } from '../store/db.ts';
import { databaseList, readEachDatabase } from './databases.ts';
import { createLogger, type Logger } from './log.ts';
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
  /** The database /readyz asks. */
  db?: Queryable;
  /**
   * Or a fleet's databases, by name: /readyz answers 200 while any of them answers, and lists each.
   * A fleet serves the databases it can reach, so one that is down must not take the process out
   * of service (or stall a rolling deploy); with none, it can do nothing.
   */
  databases?: ReadonlyMap<string, Queryable>;
  /** 0 picks a free port. */
  port: number;
  host?: string;
  /** How long /readyz waits for each database. */
  readyTimeoutMs?: number;
  /**
   * Applied to each database's error /readyz shows: `bbm` hides its URLs' passwords with it
   * (connectionMasker). Unchanged without it.
   */
  mask?: ((text: string) => string) | undefined;
  /** Where a request that failed unexpectedly (answered 500) is logged; default a JSON logger on stderr. */
  log?: Logger | undefined;
  /** How long a client may take to send a request's headers before it is answered 408 and dropped. */
  headersTimeoutMs?: number;
  /** How long a client may take to send a whole request, body included (at least headersTimeoutMs). */
  requestTimeoutMs?: number;
}

/** Largest request head (request line and headers) accepted; larger ones are answered 431. */
const MAX_HEADER_BYTES = 16 * 1024;
/** A connection with no traffic either way for this long is closed (a client that stopped reading). */
const IDLE_TIMEOUT_MS = 60_000;

export async function startOpsServer({
  registry,
  page,
  db,
  databases,
  port,
  host = '127.0.0.1',
  readyTimeoutMs = 2_000,
  mask = (text) => text,
  log,
  headersTimeoutMs = 10_000,
  requestTimeoutMs = 30_000,
}: OpsServerOptions): Promise<OpsServer> {
  const readied = databaseList({ db, databases });
  if (readied.length === 0) throw new Error('an ops server needs db or databases');
  let fallbackLog: Logger | undefined;
  const logger = () => log ?? (fallbackLog ??= createLogger({ format: 'json', destination: 2 }));

  /** Answers a request whose handler threw: 500 with a reference, logged once with it. */
  const lastResort = (request: IncomingMessage, response: ServerResponse, error: unknown) => {
    const ref = randomUUID().slice(0, 8);
    try {
      logger().error(
        {
          err: error,
          error_code: 'http_handler_failed',
          error_ref: ref,
          method: request.method,
          // The raw target, bounded: it is whatever the client sent.
          url: (request.url ?? '').slice(0, 500),
          remote: request.socket.remoteAddress,
        },
        'http: request failed, answered 500',
      );
    } catch {
      // A logger that throws must not take the server down either.
    }
    if (response.headersSent) {
      response.destroy();
      return;
    }
    response
      .writeHead(500, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' })
      .end(`internal error (ref ${ref}): see the server's log\n`);
  };

  const route = (request: IncomingMessage, response: ServerResponse): Promise<void> | undefined => {
    const reply = (status: number, body: string, headers: Record<string, string> = {}) => {
      response.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', ...headers }).end(body);
    };
    // The target as sent, up to its query: no URL parsing that could throw on what a client sends.
    const path = (request.url ?? '/').split('?', 1)[0];
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      const handled = page?.(request, response);
      if (handled) return handled;
      reply(405, 'method not allowed\n', { allow: 'GET, HEAD' });
      return undefined;
    }
    switch (path) {
      case '/metrics':
        if (!registry) {
          reply(404, 'no metrics here\n');
          return undefined;
        }
        return registry.metrics().then(
          (text) => reply(200, text, { 'content-type': registry.contentType }),
          (error: unknown) => reply(500, `metrics failed: ${(error as Error).message}\n`),
        );
      case '/healthz':
        reply(200, 'ok\n');
        return undefined;
      case '/readyz':
        return readEachDatabase(readied, ({ db }) => ping(db), readyTimeoutMs).then((pings) => {
          const [one] = pings;
          if (!databases && one) {
            if (one.error) reply(503, `database unreachable: ${mask(one.error.message)}\n`);
            else reply(200, 'ready\n');
            return;
          }
          const up = pings.filter((p) => !p.error).length;
          const each = pings.map(
            (p) => `${p.source.name}: ${p.error ? `unreachable: ${mask(p.error.message)}` : 'ready'}\n`,
          );
          const head = up > 0 ? `ready: ${up} of ${pings.length} databases answer` : 'not ready: no database answers';
          reply(up > 0 ? 200 : 503, `${head}\n${each.join('')}`);
        });
      default: {
        const handled = page?.(request, response);
        if (handled) return handled;
        reply(404, 'not found: try /metrics, /healthz or /readyz\n');
        return undefined;
      }
    }
  };

  const server = createServer(
    {
      headersTimeout: headersTimeoutMs,
      requestTimeout: Math.max(requestTimeoutMs, headersTimeoutMs),
      // Node checks the two timeouts above only this often (30 s by default).
      connectionsCheckingInterval: Math.max(100, Math.min(1_000, headersTimeoutMs / 4)),
      maxHeaderSize: MAX_HEADER_BYTES,
    },
    (request, response) => {
      // A response stream's error (the client went away) is no reason to crash.
      response.on('error', (error) => logger().debug({ err: error }, 'http: response failed'));
      let pending: Promise<void> | undefined;
      try {
        pending = route(request, response);
      } catch (error) {
        lastResort(request, response, error);
        return;
      }
      pending?.catch((error: unknown) => lastResort(request, response, error));
    },
  );
  server.setTimeout(IDLE_TIMEOUT_MS);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // Once listening, a server error (too many open files on accept, say) is logged, not thrown.
  server.on('error', (error) => logger().error({ err: error, error_code: 'http_server_error' }, 'http: server error'));
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
