/** `bbm run` as a person or a deploy script meets it: --until-done's exit code and start, and the terminal display. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, migrationRow, range } from './support/engine.ts';
import { createJobLog, runBbm, runBbmOnTerminal, TEST_CONFIG } from './support/processes.ts';

describe('bbm run --until-done', () => {
  const db = useTestDatabase();
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'bbm-run-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('exits 1 and names the failure when a migration it worked on failed; 0 when all finished', async () => {
    const { pool, url } = db();
    await createJobLog(pool);
    await createItems(pool, 'items', range(1, 40));
    await enqueue(pool, { name: 'good', work: 'test.touch', table: 'items', batchSize: 10, max: 20 });
    await enqueue(pool, { name: 'bad', work: 'test.touch', table: 'items', batchSize: 10, min: 21, max: 40 });
    const env = { DATABASE_URL: url, BBM_LOG_LEVEL: 'silent' };

    const failing = await runBbm(['run', '--until-done', '--config', TEST_CONFIG, '--max-attempts', '2'], {
      ...env,
      BBM_TEST_FAIL_AT: '35',
    });
    expect(failing.code).toBe(1);
    expect(failing.output).toMatch(
      /^bbm run: bad failed \(max_job_retry\): job \d+ \[31\.\.40\] failed 2 times; last error: row 35 cannot be migrated$/m,
    );
    expect(failing.output).not.toMatch(/good failed/);
    expect((await migrationRow(pool, 'good'))?.status).toBe(MigrationStatus.finished);

    await enqueue(pool, { name: 'later', work: 'test.touch', table: 'items', batchSize: 10, max: 10 });
    // 'bad' failed before this run and this run takes none of its jobs: it does not count.
    expect(await runBbm(['run', '--until-done', '--config', TEST_CONFIG], env)).toMatchObject({ code: 0 });
  });

  it('starts at once, whatever startupJitterMs says (an .mjs config)', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 10));
    await enqueue(pool, { name: 'quick', work: 'quick.touch', table: 'items', batchSize: 5 });
    const config = path.join(dir, 'bbm.config.mjs');
    await writeFile(
      config,
      `export default {
        work: [{ name: 'quick.touch', async do(job) { await job.query(\`UPDATE \${job.table} SET touched = touched + 1 WHERE \${job.column} BETWEEN $1 AND $2\`, [job.start, job.end]); } }],
        startupJitterMs: 3600000,
      };\n`,
    );
    // Without the skip this would sleep up to an hour; the test's timeout is a minute.
    expect(
      await runBbm(['run', '--until-done', '--config', config], { DATABASE_URL: url, BBM_LOG_LEVEL: 'silent' }),
    ).toMatchObject({ code: 0 });
    expect((await migrationRow(pool, 'quick'))?.status).toBe(MigrationStatus.finished);
  });
});

describe('bbm run on a terminal', () => {
  const db = useTestDatabase();

  it('draws a progress line per migration and one line per state change and failure, not lines per job', async () => {
    const { pool, url } = db();
    await createJobLog(pool);
    await createItems(pool, 'items', range(1, 60));
    await enqueue(pool, { name: 'fill', work: 'test.touch', table: 'items', batchSize: 10 });
    const { code, text } = await runBbmOnTerminal(['run', '--until-done', '--config', TEST_CONFIG], {
      DATABASE_URL: url,
      BBM_TEST_FAIL_AT: '25',
      BBM_TEST_JOB_SLEEP_MS: '150',
      BBM_LOG_LEVEL: '',
      BBM_LOG_FORMAT: '',
    });
    expect(code).toBe(1); // the migration failed
    expect(text).toMatch(/fill \[#*\.*\] +\d+\.\d% \d+ jobs/); // the live line
    expect(text).toMatch(/job failed/); // each failure, one line (warn)
    expect(text).toMatch(/fill: (active|running) → failed \(max_job_retry\)/); // the state change
    expect(text).not.toMatch(/job finished/);
    const failureLines = text.split(/\r?\n/).filter((line) => /job failed/.test(line));
    expect(failureLines).toHaveLength(5);
  });
});
