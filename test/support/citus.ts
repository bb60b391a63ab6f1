/**
 * A real Citus cluster (a coordinator and two workers on 127.0.0.1) for the tests that check pg-bbm
 * on Citus, started with the shared folder's cluster.sh (Citus 13.2 built for Debian's PostgreSQL
 * 15; see its README). The folder is BBM_CITUS_DIR, else `../shared/citus` beside the repository,
 * else /work/shared/citus. Citus is installed there with its install.sh when citus.so is missing and
 * the tests run as root. Without it the tests that need it are skipped, loudly; CI sets
 * BBM_REQUIRE_CITUS=1, which turns a missing Citus into a failure.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The library Citus installs into Debian's PostgreSQL 15; cluster.sh refuses to start without it. */
const CITUS_SO = '/usr/lib/postgresql/15/lib/citus.so';

function findCitusDir(): string | undefined {
  const repo = fileURLToPath(new URL('../..', import.meta.url));
  const candidates = [process.env.BBM_CITUS_DIR, path.resolve(repo, '..', 'shared', 'citus'), '/work/shared/citus'];
  return candidates.find((dir) => dir && existsSync(path.join(dir, 'cluster.sh')));
}

export const CITUS_DIR = findCitusDir();

function installed(): boolean {
  if (existsSync(CITUS_SO)) return true;
  if (!CITUS_DIR || process.getuid?.() !== 0 || !existsSync(path.join(CITUS_DIR, 'install.sh'))) return false;
  try {
    // Installs postgresql-15 from apt first when it is missing (a minute or so), then unpacks Citus.
    execFileSync(path.join(CITUS_DIR, 'install.sh'), { stdio: ['ignore', 'ignore', 'inherit'], timeout: 600_000 });
  } catch (error) {
    console.warn(`Citus install failed: ${(error as Error).message}`);
  }
  return existsSync(CITUS_SO);
}

/** Whether the tests may run; throws when Citus is missing and BBM_REQUIRE_CITUS is set. */
export function citusAvailable(): boolean {
  if (CITUS_DIR && installed()) return true;
  const why = CITUS_DIR
    ? `${CITUS_SO} is missing and ${path.join(CITUS_DIR, 'install.sh')} could not install it (it needs root)`
    : 'no citus folder (set BBM_CITUS_DIR to the folder holding cluster.sh)';
  if (process.env.BBM_REQUIRE_CITUS) throw new Error(`Citus is not available, and BBM_REQUIRE_CITUS is set: ${why}`);
  console.warn(`Citus tests skipped: ${why}`);
  return false;
}

/** Whether a TCP port on 127.0.0.1 can be bound now. */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * Three free ports in a row below 32768: Linux hands out client ports from 32768 up, so a server
 * there can find its port taken by some client connection.
 */
async function freeBasePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt += 1) {
    const base = 20_000 + Math.floor(Math.random() * 12_000);
    if ((await portFree(base)) && (await portFree(base + 1)) && (await portFree(base + 2))) return base;
  }
  throw new Error('no three free ports in a row below 32768');
}

export interface CitusCluster {
  /** The coordinator's `postgres` database, where Citus is set up. */
  readonly url: string;
  /** The workers' `postgres` databases, for looks at their shards (pg_prepared_xacts, activity). */
  readonly workerUrls: readonly string[];
  /** The coordinator's server log so far, and the workers' (for failure messages). */
  log(): Promise<string>;
  /** Stops worker node `n` (1 or 2) at once, for good (the cluster's last test may). */
  stopNode(n: 1 | 2): Promise<void>;
  /** Stops the three servers at once and removes their directory. */
  stop(): Promise<void>;
}

export interface CitusOptions {
  /** Extra server options for all three nodes (cluster.sh's CITUS_PG_OPTS). */
  serverOptions?: string;
}

/**
 * Starts a coordinator and two workers in a directory of their own under the temporary directory
 * (made reachable by the `postgres` user, which the servers run as), on three free ports below 32768.
 * fsync is off: the tests crash backends, never the machine.
 */
export async function startCitus({ serverOptions = '' }: CitusOptions = {}): Promise<CitusCluster> {
  if (!CITUS_DIR) throw new Error('no citus folder');
  const script = path.join(CITUS_DIR, 'cluster.sh');
  const parent = await mkdtemp(path.join(tmpdir(), 'bbm-citus-'));
  await chmod(parent, 0o755);
  const dir = path.join(parent, 'cluster');
  const log = async () => {
    const parts = await Promise.all(
      ['coordinator', 'worker1', 'worker2'].map(async (node) => {
        const text = await readFile(path.join(dir, `${node}.log`), 'utf8').catch(() => '');
        return `--- ${node}.log\n${text.split('\n').slice(-40).join('\n')}`;
      }),
    );
    return parts.join('\n');
  };
  const stop = async () => {
    await run(script, ['stop', dir]).catch(() => {});
    await rm(parent, { recursive: true, force: true });
  };
  const env = { ...process.env, CITUS_PG_OPTS: `-c fsync=off -c full_page_writes=off ${serverOptions}`.trim() };
  let lastError: unknown;
  // A port found free can be taken before the servers bind it: try other ports then.
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const base = await freeBasePort();
    try {
      const { stdout } = await run(script, ['start', dir, String(base)], { env, timeout: 120_000 });
      const url = stdout.trim().split('\n').at(-1) ?? '';
      if (!url.startsWith('postgres://')) throw new Error(`cluster.sh printed no URL: ${stdout}`);
      const workerUrls = [1, 2].map((i) => `postgres://postgres@127.0.0.1:${base + i}/postgres`);
      const stopNode = async (n: 1 | 2) => {
        const stopIt = `/usr/lib/postgresql/15/bin/pg_ctl -D '${path.join(dir, `worker${n}`)}' -m immediate -w stop`;
        await (process.getuid?.() === 0
          ? run('su', ['postgres', '-s', '/bin/bash', '-c', stopIt])
          : run('bash', ['-c', stopIt]));
      };
      return { url, workerUrls, log, stopNode, stop };
    } catch (error) {
      lastError = error;
      const text = `${(error as { stderr?: string }).stderr ?? ''}${await log()}`;
      if (/undefined symbol/.test(text)) {
        await stop();
        // Citus was built against PostgreSQL 15.20's headers; an older server lacks symbols it uses.
        throw new Error(
          `Citus does not load into this PostgreSQL 15 (apt-get install postgresql-15 upgrades it):\n${text}`,
          {
            cause: error,
          },
        );
      }
      if (!/in use|could not bind/.test(text)) {
        await stop();
        throw new Error(`the Citus cluster did not start:\n${text}`, { cause: error });
      }
    }
  }
  await stop();
  throw new Error('the Citus cluster did not start: its ports were taken three times', { cause: lastError });
}
