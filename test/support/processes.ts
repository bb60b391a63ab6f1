/** `bbm` as a child process, the way operators run it. */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import type pg from 'pg';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

/** The compiled command, as installed (the global setup builds dist/). */
export const BBM_BIN = fileURLToPath(new URL('../../dist/cli/bin.js', import.meta.url));
export const TEST_CONFIG = fileURLToPath(new URL('../fixtures/bbm.config.ts', import.meta.url));

export interface BbmProcess {
  child: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function startBbm(args: string[], env: Record<string, string> = {}): BbmProcess {
  const child = spawn(process.execPath, [BBM_BIN, ...args], {
    env: { ...process.env, BBM_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  return { child, output: () => output, exited };
}

/** Runs `bbm` to completion and returns its exit code and output. */
export async function runBbm(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; output: string }> {
  const proc = startBbm(args, env);
  const { code } = await proc.exited;
  return { code, output: proc.output() };
}

export async function waitFor<T>(
  probe: () => Promise<T | undefined | false>,
  what: string,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Waits until a worker is inside the job that BBM_TEST_STALL_AT makes stall (see the test config). */
export async function waitForStall(pool: pg.Pool, what: string): Promise<void> {
  await waitFor(async () => {
    // This test's database only: test files run in parallel, and other files stall workers too.
    const { rows } = await pool.query(
      `SELECT 1 FROM pg_stat_activity WHERE query LIKE '%bbm-test-stall%' AND pid <> pg_backend_pid() AND datname = current_database()`,
    );
    return rows.length > 0;
  }, what);
}

/** The table the test config's work function logs each range it runs to, with its process id. */
export async function createJobLog(pool: pg.Pool): Promise<void> {
  await pool.query('CREATE TABLE job_log (migration text, range_start bigint, range_end bigint, pid int)');
}

/**
 * `bbm ARGS` on a pseudo-terminal, as a person's shell runs it (`script` gives it one): its exit
 * code and what the terminal showed, less the ANSI escapes of the redrawn display and the
 * carriage returns.
 */
export async function runBbmOnTerminal(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; text: string }> {
  const command = [process.execPath, BBM_BIN, ...args].map((arg) => `'${arg}'`).join(' ');
  const { stdout, code } = await promisify(execFile)('script', ['-qefc', command, '/dev/null'], {
    env: { ...process.env, ...env },
    timeout: 60_000,
  }).then(
    ({ stdout }) => ({ stdout, code: 0 }),
    (error: { stdout: string; code: number }) => ({ stdout: error.stdout, code: error.code }),
  );
  // eslint-disable-next-line no-control-regex -- the ANSI escapes of the redrawn display are what it strips
  return { code, text: stdout.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').replaceAll('\r', '') };
}
