/** The operator's commands: enqueue, retry, finalize, and what status tells about pace. */
import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { ErrorCode, JobStatus, MigrationStatus } from '../src/store/codes.ts';
import { bbm } from './support/cli.ts';
import { useTestDatabase } from './support/database.ts';
import {
  createItems,
  drain,
  enqueue,
  jobRanges,
  migrationRow,
  quiet,
  range,
  testWorker,
  touch,
} from './support/engine.ts';
import { finalizeMigration } from '../src/bbm/finalize.ts';
import { createJobLog, runBbm, startBbm, TEST_CONFIG, waitFor } from './support/processes.ts';

const count = async (pool: { query: (q: string) => Promise<{ rows: Array<{ n: number }> }> }) =>
  (await pool.query('SELECT count(*)::int AS n FROM batched_background_migrations')).rows[0]!.n;

describe('bbm enqueue', () => {
  const db = useTestDatabase();
  const args = (extra: string[] = []) => [
    'enqueue',
    '--name',
    'fill',
    '--work',
    'test.touch',
    '--table',
    'items',
    '--column',
    'id',
    '--batch-size',
    '10',
    ...extra,
  ];

  it('checks the target and work, inserts the row and prints it', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 30));

    const result = await bbm([...args(['--min', '5', '--max', '25', '--json', '--config', TEST_CONFIG])], {
      DATABASE_URL: url,
    });

    expect(result).toMatchObject({ code: 0, err: '' });
    expect(JSON.parse(result.out)).toMatchObject({
      name: 'fill',
      status: 'active',
      jobSignatureName: 'test.touch',
      tableName: 'items',
      columnName: 'id',
      minValue: 5,
      maxValue: 25,
      batchSize: 10,
    });
    await drain(testWorker(pool, { work: [touch] }));
    expect((await jobRanges(pool, 'fill')).map((j) => [j.min, j.max])).toEqual([
      [5, 14],
      [15, 24],
      [25, 25],
    ]);
  });

  it('sets lanes and adaptive sizing with --lanes and --target-job-ms, and bbm set changes them while it runs', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 30));

    const enqueued = await bbm(
      [...args(['--lanes', '3', '--target-job-ms', '250', '--max-batch-size', '5000', '--json'])],
      { DATABASE_URL: url },
    );
    expect(enqueued).toMatchObject({ code: 0, err: '' });
    expect(JSON.parse(enqueued.out)).toMatchObject({
      lanes: 3,
      targetJobMs: 250,
      minBatchSize: null,
      maxBatchSize: 5000,
    });

    const set = await bbm(['set', '--name', 'fill', '--lanes', '8', '--batch-size', '20', '--fixed'], {
      DATABASE_URL: url,
    });
    expect(set).toMatchObject({ code: 0, out: 'fill: 8 lane(s), batch size 20 (fixed)\n' });
    const row = await pool.query(
      'SELECT max_parallel_jobs, batch_size, target_job_ms FROM batched_background_migrations',
    );
    expect(row.rows).toEqual([{ max_parallel_jobs: 8, batch_size: 20, target_job_ms: null }]);

    expect(await bbm(['set', '--name', 'fill', '--lanes', '0'], { DATABASE_URL: url })).toMatchObject({ code: 2 });
    expect(
      await bbm(['set', '--name', 'fill', '--min-batch-size', '10', '--max-batch-size', '5'], { DATABASE_URL: url }),
    ).toMatchObject({ code: 2 });
    expect(await bbm(['set', '--name', 'fill'], { DATABASE_URL: url })).toMatchObject({ code: 2 });
    expect(await bbm(['set', '--name', 'nope', '--lanes', '2'], { DATABASE_URL: url })).toMatchObject({ code: 1 });
    // A bound that contradicts the stored one is refused by the table's CHECK, and nothing changes.
    await bbm(['set', '--name', 'fill', '--min-batch-size', '100'], { DATABASE_URL: url });
    const refused = await bbm(['set', '--name', 'fill', '--max-batch-size', '50'], { DATABASE_URL: url });
    expect(refused).toMatchObject({ code: 1 });
    expect(refused.err).toMatch(/max_batch_size_not_below_min/);
  });

  it('enqueues paused with --paused, and says when no live worker has the work function', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 30));
    const result = await bbm(args(['--paused', '--database-url', url]));
    expect(result.code).toBe(0);
    expect(result.out).toMatch(
      /^enqueued fill \(id \d+\): test\.touch over items\.id \[1\.\.max\] in batches of 10, paused\nnote: no live worker has work function test\.touch yet\n$/,
    );
    expect((await migrationRow(pool, 'fill'))?.status).toBe(MigrationStatus.paused);
  });

  it.each([
    ['a missing table', ['--table', 'nope'], 1, /invalid_table: table "nope" does not exist/],
    ['an unindexed column', ['--column', 'v'], 1, /invalid_column: .*has no valid, non-partial btree index/],
    [
      'a work function the config lacks',
      ['--work', 'other.work', '--config', TEST_CONFIG],
      2,
      /not a work function of the config \(it has: test\.touch\)/,
    ],
    ['a malformed work name', ['--work', 'bad name'], 2, /not a valid work name/],
    ['a zero batch size', ['--batch-size', '0'], 2, /--batch-size must be a whole number from 1/],
    ['a non-numeric bound', ['--min', 'one'], 2, /--min must be an integer/],
    ['max below min', ['--min', '10', '--max', '3'], 2, /max 3 is below min 10/],
  ])('refuses %s and writes nothing', async (_, extra, code, message) => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 30));
    // Later flags win over the defaults in args().
    const result = await bbm([...args(), ...extra], { DATABASE_URL: url });
    expect(result.code).toBe(code);
    expect(result.err).toMatch(message);
    expect(await count(pool)).toBe(0);
  });

  it('refuses a name that exists', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 30));
    expect((await bbm(args(), { DATABASE_URL: url })).code).toBe(0);
    const again = await bbm(args(), { DATABASE_URL: url });
    expect(again).toMatchObject({
      code: 1,
      err: 'bbm enqueue: a migration named "fill" already exists; nothing was written\n',
    });
    expect(await count(pool)).toBe(1);
  });

  it('needs every required flag', async () => {
    const { url } = db();
    const result = await bbm(['enqueue', '--name', 'x', '--table', 'items', '--column', 'id', '--batch-size', '5'], {
      DATABASE_URL: url,
    });
    expect(result).toMatchObject({ code: 2, err: expect.stringMatching(/bbm enqueue needs --work/) });
  });
});

describe('bbm retry', () => {
  const db = useTestDatabase();

  it('makes a failed migration active again with fresh attempts, and it then finishes', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 20));
    let broken = true;
    const fragile = {
      name: 'test.fragile',
      async do(job: Parameters<typeof touch.do>[0]) {
        await touch.do(job);
        if (broken && job.start === 11n) throw new Error('not today');
      },
    };
    await enqueue(pool, { name: 'fragile', work: fragile.name, table: 'items', batchSize: 10 });
    await drain(testWorker(pool, { work: [fragile], maxAttempts: 2 }));
    expect(await migrationRow(pool, 'fragile')).toMatchObject({
      status: MigrationStatus.failed,
      failure_error_code: ErrorCode.max_job_retry,
    });

    const result = await bbm(['retry', '--name', 'fragile'], { DATABASE_URL: url });

    expect(result).toMatchObject({ code: 0, out: 'fragile is active again; 1 failed range(s) get fresh attempts\n' });
    expect(await migrationRow(pool, 'fragile')).toMatchObject({
      status: MigrationStatus.active,
      failure_error_code: null,
      failure_message: null,
    });
    expect((await jobRanges(pool, 'fragile'))[1]).toMatchObject({ status: JobStatus.failed, attempts: 0 });
    broken = false;
    await drain(testWorker(pool, { work: [fragile], maxAttempts: 2 }));
    expect((await migrationRow(pool, 'fragile'))?.status).toBe(MigrationStatus.finished);
    expect((await jobRanges(pool, 'fragile')).map((j) => [j.status, j.attempts])).toEqual([
      [JobStatus.finished, 1],
      [JobStatus.finished, 1],
    ]);
  });

  it('refuses a migration that is not failed, and an unknown name', async () => {
    const { pool, url } = db();
    await enqueue(pool, { name: 'fine', work: 'test.touch', table: 'items', batchSize: 5 });
    expect(await bbm(['retry', '--name', 'fine'], { DATABASE_URL: url })).toMatchObject({
      code: 1,
      err: 'bbm retry: fine is active; only a failed migration can be retried\n',
    });
    expect(await bbm(['retry', '--name', 'ghost'], { DATABASE_URL: url })).toMatchObject({
      code: 1,
      err: 'bbm retry: no migration named "ghost"\n',
    });
    expect(await bbm(['retry'], { DATABASE_URL: url })).toMatchObject({
      code: 2,
      err: 'bbm retry: bbm retry needs --name\n',
    });
  });
});

describe('bbm finalize', () => {
  const db = useTestDatabase();

  it('runs the rest of a migration in this process and exits 0 once it is finished', async () => {
    const { pool, url } = db();
    await createJobLog(pool);
    await createItems(pool, 'items', range(1, 95));
    await enqueue(pool, { name: 'deploy_gate', work: 'test.touch', table: 'items', batchSize: 10 });

    const result = await bbm(['finalize', '--name', 'deploy_gate', '--config', TEST_CONFIG], {
      DATABASE_URL: url,
      BBM_LOG_LEVEL: 'warn',
    });

    expect(result.err).toBe('');
    expect(result.code).toBe(0);
    expect(result.out).toMatch(/deploy_gate \[#+.*\] +\d+\.\d% \d+ jobs/);
    expect(result.out.trim().split('\n').at(-1)).toBe('deploy_gate is finished: 10 jobs, 0 failed');
    expect((await migrationRow(pool, 'deploy_gate'))?.status).toBe(MigrationStatus.finished);
    const { rows } = await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM items');
    expect(rows[0].t).toEqual([1]);
  });

  it('takes turns with a background worker on the same migration: no range runs twice', async () => {
    const { pool, url } = db();
    await createJobLog(pool);
    await createItems(pool, 'items', range(1, 3000));
    await enqueue(pool, { name: 'raced', work: 'test.touch', table: 'items', batchSize: 20 });
    const background = startBbm(['run', '--config', TEST_CONFIG], { DATABASE_URL: url });
    await waitFor(
      async () => (await pool.query('SELECT 1 FROM job_log LIMIT 1')).rows.length > 0,
      'the background worker to start',
    );

    const result = await bbm(['finalize', '--name', 'raced', '--config', TEST_CONFIG, '--json'], {
      DATABASE_URL: url,
      BBM_LOG_LEVEL: 'warn',
    });
    background.child.kill('SIGTERM');
    await background.exited;

    expect(result.code).toBe(0);
    expect(JSON.parse(result.out)).toMatchObject({ name: 'raced', status: 'finished', progress: 1 });
    const { rows } = await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM items');
    expect(rows[0].t).toEqual([1]);
    const duplicates = await pool.query('SELECT range_start FROM job_log GROUP BY range_start HAVING count(*) > 1');
    expect(duplicates.rows).toEqual([]);
    const runners = await pool.query('SELECT count(DISTINCT pid)::int AS n FROM job_log');
    expect(runners.rows[0].n).toBe(2);
  });

  it('exits 1 when the migration fails or already failed, and 2 without the work function', async () => {
    const { pool, url } = db();
    await createJobLog(pool);
    await createItems(pool, 'items', range(1, 30));
    await enqueue(pool, { name: 'doomed', work: 'test.touch', table: 'items', batchSize: 10 });
    await enqueue(pool, { name: 'alien', work: 'not.here', table: 'items', batchSize: 10 });
    const env = { DATABASE_URL: url, BBM_LOG_LEVEL: 'silent' };

    // In a process of its own: the failing range is set up through the environment.
    const doomed = await runBbm(['finalize', '--name', 'doomed', '--config', TEST_CONFIG], {
      ...env,
      BBM_TEST_FAIL_AT: '15',
    });
    expect(doomed.code).toBe(1);
    expect(doomed.output).toMatch(
      /doomed is not finished: failed \(max_job_retry\): job \d+ \[11\.\.20\] failed 5 times; last error: row 15 cannot be migrated/,
    );
    expect(await bbm(['finalize', '--name', 'doomed', '--config', TEST_CONFIG], env)).toMatchObject({ code: 1 });
    expect(await bbm(['finalize', '--name', 'alien', '--config', TEST_CONFIG], env)).toMatchObject({
      code: 2,
      err: expect.stringMatching(/alien runs work function not\.here, which the config does not register/),
    });
    expect(await bbm(['finalize', '--name', 'ghost', '--config', TEST_CONFIG], env)).toMatchObject({
      code: 2,
      err: expect.stringMatching(/no migration named "ghost"/),
    });
    expect(await bbm(['finalize', '--name', 'doomed'], { ...env, DATABASE_URL: url })).toMatchObject({ code: 2 });
  });
});

describe('finalizing a paused migration', () => {
  const db = useTestDatabase();

  it('runs it to the end and says it overrode the pause', async () => {
    const { pool, url } = db();
    await createJobLog(pool);
    await createItems(pool, 'items', range(1, 30));
    await enqueue(pool, {
      name: 'resting',
      work: 'test.touch',
      table: 'items',
      batchSize: 10,
      status: MigrationStatus.paused,
    });
    const result = await runBbm(['finalize', '--name', 'resting', '--config', TEST_CONFIG], {
      DATABASE_URL: url,
      BBM_LOG_LEVEL: 'warn',
      BBM_LOG_FORMAT: 'json',
    });
    expect(result.code).toBe(0);
    expect(result.output).toMatch(/"level":40,.*resting was paused: finalizing runs it anyway/);
    expect(result.output.trim().split('\n').at(-1)).toBe('resting is finished: 3 jobs, 0 failed');
    expect((await migrationRow(pool, 'resting'))?.status).toBe(MigrationStatus.finished);
  });

  it('pauses it again when finalizing stops before the end', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    await enqueue(pool, {
      name: 'resting',
      work: 'test.touch',
      table: 'items',
      batchSize: 10,
      status: MigrationStatus.paused,
    });
    const stop = new AbortController();
    stop.abort();
    await expect(
      finalizeMigration({ pool, work: [touch], name: 'resting', logger: quiet, signal: stop.signal }),
    ).rejects.toThrow(/interrupted/);
    expect((await migrationRow(pool, 'resting'))?.status).toBe(MigrationStatus.paused);
  });

  it('keeps no listener on a hardStop signal that outlives it', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    const hardStop = new AbortController().signal;
    for (const name of ['first', 'second']) {
      await enqueue(pool, { name, work: 'test.touch', table: 'items', batchSize: 10 });
      await finalizeMigration({ pool, work: [touch], name, logger: quiet, hardStop });
    }
    expect(getEventListeners(hardStop, 'abort')).toHaveLength(0);
  });
});

describe('bbm status pace', () => {
  const db = useTestDatabase();

  it('reports rows per second and time left from the last jobs, and the last job error', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 100));
    const id = await enqueue(pool, {
      name: 'paced',
      work: 'test.touch',
      table: 'items',
      batchSize: 10,
      max: 100,
      status: MigrationStatus.running,
    });
    // Four ranges of 10 finished over the last 8 seconds; one range failed.
    await pool.query(
      `INSERT INTO batched_background_migration_jobs
         (batched_background_migration_id, min_value, max_value, status, attempts, started_at, finished_at, failure_message)
       SELECT $1::bigint, s, s + 9, 2, 1, now() - make_interval(secs => 10 - (s / 10) * 2), now() - make_interval(secs => 8 - (s / 10) * 2), NULL
       FROM generate_series(1, 31, 10) s
       UNION ALL SELECT $1::bigint, 41, 50, 3, 1, now(), NULL, 'row 44 is odd'`,
      [id],
    );

    const result = await bbm(['status', '--json'], { DATABASE_URL: url });

    const [report] = JSON.parse(result.out);
    expect(report.progress).toBeCloseTo(0.4);
    // 40 rows in 8 s (from the first start to the last finish).
    expect(report.rowsPerSecond).toBeCloseTo(5, 0);
    expect(report.etaSeconds).toBeCloseTo(12, 0);
    expect(report.lastError).toBe('row 44 is odd');
    const table = await bbm(['status', '--config', TEST_CONFIG], { DATABASE_URL: url });
    expect(table.out).toMatch(
      /paced\s+running\s+40\.0%\s+4\/1\s+5\s+12s\s+items\.id \[1\.\.100\] by 10\s+test\.touch\s+last job error: row 44 is odd/,
    );

    // Failed or paused, with the same recent jobs: no pace, no time left (neither is moving).
    for (const status of [MigrationStatus.failed, MigrationStatus.paused]) {
      await pool.query('UPDATE batched_background_migrations SET status = $1 WHERE id = $2', [status, id]);
      const [stopped] = JSON.parse((await bbm(['status', '--json'], { DATABASE_URL: url })).out);
      expect(stopped).toMatchObject({ rowsPerSecond: null, etaSeconds: null });
      expect((await bbm(['status'], { DATABASE_URL: url })).out).toMatch(
        /paced\s+(failed|paused)\s+40\.0%\s+4\/1\s+-\s+-\s/,
      );
    }
  });

  it('--watch redraws every second until interrupted, then exits 0 (plain blocks when not a terminal)', async () => {
    const { pool, url } = db();
    await enqueue(pool, { name: 'watched', work: 'test.touch', table: 'items', batchSize: 10 });
    const watcher = startBbm(['status', '--watch'], { DATABASE_URL: url });
    await waitFor(async () => (watcher.output().match(/^--- /gm)?.length ?? 0) >= 2, 'two redraws', 10_000);

    watcher.child.kill('SIGINT');

    expect(await watcher.exited).toEqual({ code: 0, signal: null });
    const blocks = watcher.output().split(/^--- /m).filter(Boolean);
    expect(blocks.length).toBeGreaterThanOrEqual(2);
    for (const block of blocks)
      expect(block).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z\nID\s+NAME\s+STATUS[^\n]*\n1\s+watched\s+active/);
  });
});
