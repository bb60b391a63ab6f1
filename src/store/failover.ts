/**
 * Connections to a list of servers, libpq's way (node-postgres connects to one host): hosts are
 * tried in order and a connection is kept on the first whose sessions are what
 * target_session_attrs asks for, by default one that takes writes. A standby, a server whose
 * transactions are read-only or one that refuses the connection is skipped.
 *
 * The host that last served is remembered, for every pool made with the same class (a worker's
 * lanes and its controllers): a new connection goes straight there and checks it is still right
 * (one query). Only when that is not known does a search probe the list, one search for all the
 * connections that wait for it. After a failover the old primary's connections fail (terminated;
 * or every write answered 25006 once it is a standby or read-only): such a connection forgets the
 * host, ends itself so that its pool does not lend it again, and the next connection searches.
 */
import pg from 'pg';
import type { HostPort, SessionAttrs } from './hosts.ts';

/** pg's Client constructor, as pg-pool calls it: `new Client(poolOptions)`. */
export type ClientClass = new (config?: string | pg.ClientConfig) => pg.Client;

/** SQLSTATE 25006, read_only_sql_transaction: a write on a standby, or in a read-only transaction. */
const READ_ONLY = '25006';
/** SQLSTATE 08001: no server of the list could be used (what libpq reports, as a client-side code). */
const UNABLE_TO_CONNECT = '08001';
/** How long a probe may take when the pool sets no connectionTimeoutMillis. */
const PROBE_TIMEOUT_MS = 10_000;

/** A server that is not what target_session_attrs asks for; transient (25006) like a write there. */
class WrongSessionError extends Error {
  readonly code = READ_ONLY;
}

/** No server of the list could be used; transient, like a connection refused. */
class NoServerError extends Error {
  readonly code = UNABLE_TO_CONNECT;
}

interface Internals {
  host: string;
  port: number;
  connectionParameters: { host: string; port: number };
  connection: {
    stream: { destroyed?: boolean };
    on(event: 'errorMessage', listener: (message: { code?: string }) => void): void;
    on(event: 'end', listener: () => void): void;
  };
  _ending: boolean;
}

const internals = (client: pg.Client) => client as unknown as Internals;

/** Points a client not yet connected at one host of the list (pg connects to `host`/`port` at connect). */
function pointAt(client: pg.Client, { host, port }: HostPort): void {
  const inner = internals(client);
  inner.host = host;
  inner.port = port;
  inner.connectionParameters.host = host;
  inner.connectionParameters.port = port;
}

const label = ({ host, port }: HostPort) => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);

/** Why a connected session is not what `attrs` asks for, or undefined when it is. */
async function wrongSession(client: pg.Client, attrs: SessionAttrs): Promise<string | undefined> {
  if (attrs === 'any') return undefined;
  const { rows } = await client.query<{ in_recovery: boolean; read_only: string }>(
    `SELECT pg_catalog.pg_is_in_recovery() AS in_recovery, pg_catalog.current_setting('transaction_read_only') AS read_only`,
  );
  const row = rows[0];
  if (row?.in_recovery) return 'is a standby (in recovery)';
  if (attrs === 'read-write' && row?.read_only === 'on') return 'takes no writes (transaction_read_only is on)';
  return undefined;
}

/** Rejects with `message` after `ms`, having run `onTimeout`; else settles as `promise` does. */
function withDeadline<T>(promise: Promise<T>, ms: number, onTimeout: () => void, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new Error(message));
    }, ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** Connects to one host on its own and says whether it will do, or why not. */
async function probe(
  options: pg.ClientConfig,
  target: HostPort,
  attrs: SessionAttrs,
): Promise<{ ok: true } | { ok: false; reason: string; error?: Error }> {
  const timeoutMs = options.connectionTimeoutMillis || PROBE_TIMEOUT_MS;
  const client = new pg.Client({ ...options, connectionTimeoutMillis: timeoutMs });
  client.on('error', () => {});
  pointAt(client, target);
  try {
    const reason = await withDeadline(
      client.connect().then(() => wrongSession(client, attrs)),
      timeoutMs,
      () => void client.end().catch(() => {}),
      `no answer within ${timeoutMs} ms`,
    );
    return reason === undefined ? { ok: true } : { ok: false, reason };
  } catch (thrown) {
    const error = thrown instanceof Error ? thrown : new Error(String(thrown));
    return { ok: false, reason: error.message, error };
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * A pg Client class for a pool over `hosts` (pass it as the pool's `Client`). Pools that share the
 * class share what it remembers of which host serves.
 */
export function failoverClient(hosts: readonly HostPort[], attrs: SessionAttrs): ClientClass {
  /** The index of the host that last served, when known. */
  let serving: number | undefined;
  let search: Promise<number> | undefined;

  /** The first host of the list that will do; one search at a time for all connections. */
  const findServer = (options: pg.ClientConfig): Promise<number> =>
    (search ??= (async () => {
      const refusals: string[] = [];
      let fatal: Error | undefined;
      for (const [index, host] of hosts.entries()) {
        const result = await probe(options, host, attrs);
        if (result.ok) return index;
        refusals.push(`${label(host)} ${result.reason}`);
        // A wrong password or a missing database is no reason to wait: say so if no host will do.
        if (result.error && !isTransientConnectError(result.error)) fatal ??= result.error;
      }
      if (fatal) throw fatal;
      throw new NoServerError(`no server of the list will do (target_session_attrs=${attrs}): ${refusals.join('; ')}`);
    })().finally(() => (search = undefined)));

  const forget = (index: number) => {
    if (serving === index) serving = undefined;
  };

  return class FailoverClient extends pg.Client {
    readonly #options: pg.ClientConfig;

    constructor(config?: string | pg.ClientConfig) {
      super(config);
      this.#options = typeof config === 'string' ? { connectionString: config } : { ...config };
    }

    override connect(): Promise<pg.Client>;
    override connect(callback: ((err: Error) => void) | ((err: null, c: pg.Client) => void)): void;
    override connect(
      callback?: ((err: Error) => void) | ((err: null, c: pg.Client) => void),
    ): Promise<pg.Client> | void {
      const opening = this.#open().then(() => this as pg.Client);
      if (!callback) return opening;
      opening.then(
        (client) => (callback as (err: null, c: pg.Client) => void)(null, client),
        (error: Error) => (callback as (err: Error) => void)(error),
      );
    }

    async #open(): Promise<void> {
      const index = serving ?? (await findServer(this.#options));
      const host = hosts[index]!;
      // The pool's connectionTimeoutMillis fired during the search (it destroys the socket).
      if (internals(this).connection.stream.destroyed)
        throw new Error('Connection terminated due to connection timeout');
      pointAt(this, host);
      try {
        await super.connect();
      } catch (error) {
        forget(index);
        throw error;
      }
      let reason: string | undefined;
      try {
        reason = await wrongSession(this, attrs);
      } catch (error) {
        forget(index);
        await this.end().catch(() => {});
        throw error;
      }
      if (reason !== undefined) {
        forget(index);
        await this.end().catch(() => {});
        throw new WrongSessionError(`${label(host)} ${reason} (target_session_attrs=${attrs})`);
      }
      serving = index;
      this.#watch(index);
    }

    /**
     * Registered after pg's own listeners, so that a statement's error has reached its caller
     * (pg hands it over at the ErrorResponse): a session that turned read-only (25006) ends there
     * and then, and its pool, seeing it ending, drops it on release instead of lending it again
     * (what the caller sends meanwhile, a ROLLBACK, fails as on a lost connection). A session that
     * ended without being asked to makes the next connection look for the server again.
     */
    #watch(index: number): void {
      const connection = internals(this).connection;
      if (attrs !== 'any') {
        connection.on('errorMessage', (message) => {
          if (message.code !== READ_ONLY || internals(this)._ending) return;
          forget(index);
          void this.end().catch(() => {});
        });
      }
      connection.on('end', () => {
        if (!internals(this)._ending) forget(index);
      });
    }
  };
}

/** A probe's failure that waiting may cure: the server is down, starting, full or unreachable. */
function isTransientConnectError(error: Error): boolean {
  if (!(error instanceof pg.DatabaseError)) return true;
  return /^(08|53|57P0[1-3])/.test(error.code ?? '');
}
