/**
 * What an operator sees of a running worker: Prometheus metrics over HTTP, Sentry reports (to a
 * real @sentry/node client, received by an ingest endpoint served here), JSON logs, and shutdown.
 */
import { describe, expect, it, onTestFinished } from 'vitest';
import { createMetrics, METRIC_HELP } from '../src/bbm/metrics.ts';
import { startOpsServer } from '../src/bbm/ops-server.ts';
import { createPool } from '../src/store/db.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, jobRanges, migrationRow, range } from './support/engine.ts';
import { createJobLog, runBbm, startBbm, TEST_CONFIG, waitFor, waitForStall } from './support/processes.ts';
import { sentryEvents, sentryIngest } from './support/sentry.ts';

/** Prometheus text format, enough of it: `name{a="b"} value` lines, keyed by name and sorted labels. */
function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!match) throw new Error(`unparsable metrics line: ${line}`);
    const labels = (match[2] ?? '')
      .replace(/^\{|\}$/g, '')
      .split(',')
      .filter(Boolean)
      .sort()
      .join(',');
    samples.set(labels ? `${match[1]}{${labels}}` : match[1]!, Number(match[3]));
  }
  return samples;
}

describe('bbm run --metrics-port', () => {
  const db = useTestDatabase();

  it('serves /metrics, /healthz and /readyz on 127.0.0.1, with values that match the work done', async () => {
    const { pool, url } = db();
    await createJobLog(pool);
    await createItems(pool, 'items', range(1, 250));
    await pool.query('DELETE FROM items WHERE id % 10 = 0');
    await enqueue(pool, { name: 'counted', work: 'test.touch', table: 'items', batchSize: 20 });
    await enqueue(pool, {
      name: 'later@2026-01-01T00:00:00Z',
      work: 'test.touch',
      table: 'items',
      batchSize: 20,
      status: MigrationStatus.paused,
    });
    const worker = startBbm(
      ['run', '--config', TEST_CONFIG, '--metrics-port', '0', '--log-level', 'info', '--log-format', 'json'],
      {
        DATABASE_URL: url,
        BBM_LOG_LEVEL: 'info',
      },
    );
    onTestFinished(() => void worker.child.kill('SIGKILL'));
    const base = await waitFor(async () => {
      const line = worker
        .output()
        .split('\n')
        .find((l) => l.includes('serving metrics'));
      return line ? (JSON.parse(line) as { url: string }).url.replace(/\/metrics$/, '') : undefined;
    }, 'the metrics server');
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    await waitFor(
      async () => (await migrationRow(pool, 'counted'))?.status === MigrationStatus.finished,
      'the migration to finish',
    );
    // Once a run found nothing to do, the worker has also reported the wait that follows it.
    await waitFor(
      async () => (await (await fetch(`${base}/metrics`)).text()).includes('bbm_runs_total{result="no_job"}'),
      'an idle run',
    );

    const response = await fetch(`${base}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await response.text();
    const metrics = parseMetrics(text);
    const jobs = (await jobRanges(pool, 'counted')).length;
    expect(jobs).toBe(12);
    expect(metrics.get('bbm_jobs_total{migration="counted",result="succeeded"}')).toBe(jobs);
    expect(metrics.get('bbm_migrated_tuples_total{migration="counted"}')).toBe(225);
    expect(metrics.get('bbm_runs_total{result="job_ran"}')).toBe(jobs);
    expect(metrics.get('bbm_runs_total{result="migration_changed"}')).toBe(2);
    expect(metrics.get('bbm_job_batch_size_count')).toBe(jobs);
    expect(metrics.get('bbm_job_duration_seconds_count{migration="counted",work="test.touch"}')).toBe(jobs);
    expect(metrics.get('bbm_run_duration_seconds_count')).toBeGreaterThanOrEqual(jobs + 2);
    expect(metrics.get('bbm_sleep_duration_seconds_count')).toBeGreaterThan(0);
    expect(metrics.get('bbm_migrations{status="finished"}')).toBe(1);
    expect(metrics.get('bbm_migrations{status="paused"}')).toBe(1);
    expect(metrics.get('bbm_migrations{status="failed"}')).toBe(0);
    // Passes of a schedule share their schedule's series; finished migrations drop out.
    expect(metrics.get('bbm_migration_progress{migration="later"}')).toBe(0);
    expect(metrics.has('bbm_migration_progress{migration="counted"}')).toBe(false);
    expect(metrics.has('process_cpu_user_seconds_total')).toBe(true);
    for (const [name, help] of Object.entries(METRIC_HELP)) expect(text).toContain(`# HELP ${name} ${help}`);
    expect(text).not.toMatch(/job_id=/);

    expect(await (await fetch(`${base}/healthz`)).text()).toBe('ok\n');
    expect(await (await fetch(`${base}/readyz`)).text()).toBe('ready\n');
    expect((await fetch(`${base}/nope`)).status).toBe(404);

    worker.child.kill('SIGTERM');
    expect(await worker.exited).toEqual({ code: 0, signal: null });
    await expect(fetch(`${base}/healthz`)).rejects.toThrow();

    // One JSON line per job outcome, with the run's correlation id and the job's fields; no idle lines at info.
    const lines = worker
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const jobLines = lines.filter((l) => l.msg === 'job finished');
    expect(jobLines).toHaveLength(jobs);
    for (const line of jobLines) {
      expect(line).toMatchObject({
        level: 30,
        correlation_id: expect.stringMatching(/^[0-9a-f-]{36}$/),
        bbm_id: expect.any(String),
        bbm_name: 'counted',
        job_id: expect.any(String),
        job_start: expect.any(String),
        job_end: expect.any(String),
        attempt: 1,
      });
    }
    expect(new Set(jobLines.map((l) => l.correlation_id)).size).toBe(jobs);
    expect(lines.some((l) => l.msg === 'nothing to do')).toBe(false);
  });

  it('/readyz answers 503 when the database is unreachable', async () => {
    const unreachable = createPool({ connectionString: 'postgres://nobody:secret@127.0.0.1:1/none', max: 1 });
    const { registry } = createMetrics();
    const server = await startOpsServer({ registry, db: unreachable, port: 0 });
    onTestFinished(async () => {
      await server.close();
      await unreachable.end();
    });
    const response = await fetch(`http://127.0.0.1:${server.port}/readyz`);
    expect(response.status).toBe(503);
    expect(await response.text()).toMatch(/^database unreachable: .*ECONNREFUSED/);
  });

  it('refuses --metrics-host without --metrics-port, and a bad port', async () => {
    const { url } = db();
    expect(
      await runBbm(['run', '--config', TEST_CONFIG, '--metrics-host', '0.0.0.0'], { DATABASE_URL: url }),
    ).toMatchObject({
      code: 2,
      output: expect.stringMatching(/--metrics-host needs --metrics-port/),
    });
    expect(
      await runBbm(['run', '--config', TEST_CONFIG, '--metrics-port', '70000'], { DATABASE_URL: url }),
    ).toMatchObject({
      code: 2,
      output: expect.stringMatching(/--metrics-port must be a whole number from 0 to 65535/),
    });
  });
});

describe('Sentry', () => {
  const db = useTestDatabase();

  it('reports each failed attempt and each failed migration once, tagged, without the password', async () => {
    const { pool, url } = db();
    expect(new URL(url).password).not.toBe('');
    const ingest = await sentryIngest();
    onTestFinished(() => ingest.close());
    await createJobLog(pool);
    await createItems(pool, 'items', range(1, 40));
    await enqueue(pool, { name: 'poisoned', work: 'test.touch', table: 'items', batchSize: 10 });
    await enqueue(pool, { name: 'misnamed', work: 'test.touch', table: 'no_such_table', batchSize: 10 });

    const result = await runBbm(['run', '--config', TEST_CONFIG, '--until-done', '--max-attempts', '2'], {
      DATABASE_URL: url,
      SENTRY_DSN: ingest.dsn,
      BBM_TEST_FAIL_AT: '25',
      BBM_LOG_LEVEL: 'silent',
    });

    expect(result).toMatchObject({ code: 1 }); // --until-done: migrations it worked on failed
    expect(await migrationRow(pool, 'poisoned')).toMatchObject({ status: MigrationStatus.failed });
    const events = sentryEvents(ingest.envelopes);
    const summary = events.map((e) => {
      const tags = e.tags as Record<string, string>;
      return [tags.outcome, tags.bbm_name, tags.work, tags.error_code];
    });
    expect(summary.sort()).toEqual(
      [
        ['job_failed', 'poisoned', 'test.touch', 'unknown'],
        ['job_failed', 'poisoned', 'test.touch', 'unknown'],
        ['migration_failed', 'misnamed', 'test.touch', 'invalid_table'],
        ['migration_failed', 'poisoned', 'test.touch', 'max_job_retry'],
      ].sort(),
    );
    for (const event of events)
      expect((event.tags as Record<string, string>).correlation_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(new Set(events.map((e) => e.event_id)).size).toBe(4);
    expect(new Set(events.map((e) => (e.tags as Record<string, string>).correlation_id)).size).toBe(4);
    const failure = events.find((e) => (e.tags as Record<string, string>).outcome === 'job_failed');
    expect(JSON.stringify(failure)).toContain('row 25 cannot be migrated');
    for (const envelope of ingest.envelopes) expect(envelope.raw).not.toContain(new URL(url).password);
  });
});

describe('shutdown', () => {
  const db = useTestDatabase();

  it('rolls the job in flight back when it outlasts the grace period after SIGTERM, and exits 0', async () => {
    const { pool, url } = db();
    await createJobLog(pool);
    await createItems(pool, 'items', range(1, 100));
    await enqueue(pool, { name: 'slow', work: 'test.touch', table: 'items', batchSize: 50 });
    const worker = startBbm(['run', '--config', TEST_CONFIG, '--grace-period', '300'], {
      DATABASE_URL: url,
      BBM_TEST_STALL_AT: '60',
    });
    await waitForStall(pool, 'the worker to be mid-job');

    const stopped = Date.now();
    worker.child.kill('SIGTERM');

    expect(await worker.exited, worker.output()).toEqual({ code: 0, signal: null });
    expect(Date.now() - stopped).toBeLessThan(10_000);
    expect((await jobRanges(pool, 'slow')).map((j) => [j.min, j.max])).toEqual([[1, 50]]);
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM items WHERE touched > 0 AND id > 50');
    expect(rows[0].n).toBe(0);
  });
});
