/** The status page over HTTP: what it shows (escaped), live data, and controls behind the operator token. */
import type pg from 'pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startOpsServer } from '../src/bbm/ops-server.ts';
import { createStatusPage, type PageRehearsal } from '../src/bbm/status-page.ts';
import { html } from '../src/bbm/status-page-html.ts';
import { resolveSchedules } from '../src/bbm/schedules.ts';
import type { RehearsalReport, Work } from '../src/bbm/types.ts';
import { WorkRegistry } from '../src/bbm/work-registry.ts';
import { ACTIONS_BY_STATUS, MigrationStatus, type MigrationStatusName } from '../src/store/codes.ts';
import { growLanes, setMigrationPace, shedLanes, startInOneLane } from '../src/store/migration-rows.ts';
import { announceWorker, recordDutyCycle } from '../src/store/workers.ts';
import { bbm } from './support/cli.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, migrationRow, quiet, range, testWorker, touch } from './support/engine.ts';
import { waitFor } from './support/processes.ts';

const TOKEN = 'operator-token-0123456789';
const HOSTILE = '<img src=x onerror=alert(1)>';

async function serve(pool: pg.Pool | pg.ClientBase, token?: string, rehearse?: PageRehearsal) {
  const server = await startOpsServer({
    page: createStatusPage({ db: pool, token, log: quiet, rehearse }),
    db: pool,
    port: 0,
  });
  onTestFinished(() => server.close());
  const base = `http://${server.host}:${server.port}`;
  const post = (path: string, headers: Record<string, string> = {}) =>
    fetch(`${base}${path}`, { method: 'POST', headers });
  return { base, post };
}

/** The migration's stored rehearsal (the `rehearsal` column), or null. */
async function storedRehearsal(pool: pg.Pool, name: string): Promise<unknown> {
  const { rows } = await pool.query('SELECT rehearsal FROM batched_background_migrations WHERE name = $1', [name]);
  return rows[0]?.rehearsal;
}

/** A migration's lanes_allowed and lanes_reason, as stored. */
async function lanesRow(pool: pg.Pool, name: string): Promise<unknown> {
  const { rows } = await pool.query(
    'SELECT lanes_allowed, lanes_reason FROM batched_background_migrations WHERE name = $1',
    [name],
  );
  return rows[0];
}

/** Text as a regular expression matches it literally. */
const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const touchedRows = async (pool: pg.Pool) =>
  (await pool.query('SELECT count(*)::int AS n FROM items WHERE touched > 0')).rows[0].n as number;

describe('the status page', () => {
  const db = useTestDatabase();

  it('shows every migration, escapes what rows hold, and its JSON follows a worker draining one', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 400));
    await enqueue(pool, { name: HOSTILE, work: touch.name, table: 'items', batchSize: 10 });
    const { base } = await serve(pool);

    const page = await (await fetch(`${base}/`)).text();
    expect(page).toContain('&#60;img src=x onerror=alert(1)&#62;');
    expect(page).not.toContain(HOSTILE);
    expect(page).toContain('Read-only');
    const script = await fetch(`${base}/status-page.js`);
    expect(script.headers.get('content-type')).toMatch(/javascript/);
    expect(await script.text()).not.toContain('innerHTML');

    const progress = async () =>
      ((await (await fetch(`${base}/api/migrations`)).json()) as Array<{ progress: number }>)[0]!.progress;
    expect(await progress()).toBe(0);
    const worker = testWorker(pool, { work: [touch], pauseMs: 20 });
    const running = worker.run({ untilDone: true });
    const seen = await waitFor(async () => {
      const p = await progress();
      return p > 0 && p < 1 ? p : undefined;
    }, 'progress part of the way');
    expect(seen).toBeGreaterThan(0);
    await running;
    expect(await progress()).toBe(1);
  });

  it("shows a migration's recent jobs and failed ranges, error messages escaped", async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    const failing = {
      name: touch.name,
      async do(job: Parameters<typeof touch.do>[0]) {
        await touch.do(job);
        if (job.start === 11n) throw new Error(`bad row ${HOSTILE}`);
      },
    };
    await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 10 });
    const worker = testWorker(pool, { work: [failing], maxAttempts: 2 });
    await worker.run({ untilDone: true });
    const { base } = await serve(pool);
    const page = await (await fetch(`${base}/migrations/fill`)).text();
    expect(page).toMatch(
      /<h2>Failed ranges<\/h2><div class="wrap" id="failed" data-live><table>.*<td>11\.\.20<\/td><td>failed<\/td><td>2<\/td>/s,
    );
    expect(page).toContain('bad row &#60;img src=x onerror=alert(1)&#62;');
    expect(page).not.toContain(HOSTILE);
    expect((await fetch(`${base}/migrations/nope`)).status).toBe(404);
  });

  it('pauses, resumes and retries only with the token, from its own origin, never by GET', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 200));
    await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 10 });
    const { base, post } = await serve(pool, TOKEN);
    const status = async () => (await migrationRow(pool, 'fill'))?.status;

    expect((await post('/api/migrations/fill/pause')).status).toBe(403);
    expect((await post('/api/migrations/fill/pause', { 'x-bbm-token': 'wrong-token-0123456789' })).status).toBe(403);
    expect(
      (await post('/api/migrations/fill/pause', { 'x-bbm-token': TOKEN, origin: 'http://evil.example' })).status,
    ).toBe(403);
    expect((await fetch(`${base}/api/migrations/fill/pause`)).status).toBe(404);
    expect(await status()).toBe(MigrationStatus.active);

    const paused = await post('/api/migrations/fill/pause', { 'x-bbm-token': TOKEN, origin: base });
    expect(paused.status).toBe(200);
    expect(await paused.json()).toEqual({ action: 'pause', name: 'fill', changed: true });
    expect(await status()).toBe(MigrationStatus.paused);
    // A paused migration: a worker takes none of its jobs.
    const worker = testWorker(pool, { work: [touch] });
    await worker.run({ untilDone: true });
    expect((await pool.query('SELECT count(*)::int AS n FROM items WHERE touched > 0')).rows[0].n).toBe(0);

    expect((await post('/api/migrations/fill/resume', { 'x-bbm-token': TOKEN })).status).toBe(200);
    expect((await post('/api/migrations/fill/retry', { 'x-bbm-token': TOKEN })).status).toBe(409); // not failed: nothing to retry
    await testWorker(pool, { work: [touch] }).run({ untilDone: true });
    expect(await status()).toBe(MigrationStatus.finished);
    expect(await (await fetch(`${base}/`)).text()).not.toContain('Read-only');
  });

  it("changes a migration's lanes and batch size with the token, and refuses bad values", async () => {
    const { pool } = db();
    await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 10 });
    const { base } = await serve(pool, TOKEN);
    const set = (body: unknown) =>
      fetch(`${base}/api/migrations/fill/set`, {
        method: 'POST',
        headers: { 'x-bbm-token': TOKEN, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    const pace = async () =>
      (
        await pool.query('SELECT max_parallel_jobs, batch_size FROM batched_background_migrations WHERE name = $1', [
          'fill',
        ])
      ).rows[0];
    expect((await set({ lanes: 3, batchSize: '50' })).status).toBe(200);
    expect(await pace()).toEqual({ max_parallel_jobs: 3, batch_size: 50 });
    for (const bad of [{ lanes: 0 }, { lanes: 257 }, { batchSize: 1.5 }, {}, 'text']) {
      expect((await set(bad)).status).toBe(400);
    }
    expect(await pace()).toEqual({ max_parallel_jobs: 3, batch_size: 50 });
  });

  it('lists the schedules it is given, with their last pass and next due', async () => {
    const { pool } = db();
    const schedules = resolveSchedules(
      [{ name: 'sweep', work: touch.name, table: 'items', column: 'id', batchSize: 10, every: '1h' }],
      new WorkRegistry([touch]),
    );
    const server = await startOpsServer({ page: createStatusPage({ db: pool, schedules }), db: pool, port: 0 });
    onTestFinished(() => server.close());
    const page = await (await fetch(`http://${server.host}:${server.port}/`)).text();
    expect(page).toMatch(
      /<h2>Schedules<\/h2>.*<td>sweep<\/td><td>1h<\/td><td>test\.touch<\/td><td>-<\/td><td>-<\/td><td>\d{4}-\d\d-\d\dT/s,
    );
  });

  it('offers only the actions valid for each state, and refuses the others with 409', async () => {
    const { pool } = db();
    const statuses = Object.keys(MigrationStatus) as MigrationStatusName[];
    for (const status of statuses)
      await enqueue(pool, {
        name: `m_${status}`,
        work: touch.name,
        table: 'items',
        batchSize: 10,
        status: MigrationStatus[status],
      });
    const { base, post } = await serve(pool, TOKEN);
    const page = await (await fetch(`${base}/`)).text();
    for (const status of statuses) {
      const row = new RegExp(`<tr data-name="m_${status}"[^]*?</tr>`).exec(page)?.[0] ?? '';
      expect(row, status).toContain(`<span class="badge s-${status}" data-field="status">${status}</span>`);
      expect(
        [...row.matchAll(/data-action="(\w+)"/g)].map((m) => m[1]),
        status,
      ).toEqual(ACTIONS_BY_STATUS[status]);
    }
    const all = ['pause', 'resume', 'retry', 'approve', 'delete'] as const;
    for (const status of statuses) {
      for (const action of all.filter((a) => !ACTIONS_BY_STATUS[status].includes(a))) {
        const refused = await post(`/api/migrations/m_${status}/${action}`, { 'x-bbm-token': TOKEN });
        expect(refused.status, `${action} on ${status}`).toBe(409);
        expect(await refused.json()).toEqual({
          error: expect.stringContaining(`m_${status} is ${status}: ${action} is not valid now`),
        });
      }
      expect((await migrationRow(pool, `m_${status}`))?.status).toBe(MigrationStatus[status]);
    }
    expect((await post('/api/migrations/ghost/approve', { 'x-bbm-token': TOKEN })).status).toBe(404);
  });

  it('approves only with the token, recording who; deletes only with the confirmation', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 20));
    await enqueue(pool, {
      name: 'gated',
      work: touch.name,
      table: 'items',
      batchSize: 10,
      status: MigrationStatus.awaiting_approval,
    });
    await enqueue(pool, {
      name: 'gated2',
      work: touch.name,
      table: 'items',
      batchSize: 10,
      status: MigrationStatus.awaiting_approval,
    });
    const { base, post } = await serve(pool, TOKEN);
    const overview = await (await fetch(`${base}/`)).text();
    expect(overview).toMatch(/<h2>Awaiting approval<\/h2><ul id="awaiting"><li><b>gated<\/b>.*<li><b>gated2<\/b>/);
    const approve = (name: string, headers: Record<string, string>, body: unknown = {}) =>
      fetch(`${base}/api/migrations/${name}/approve`, { method: 'POST', headers, body: JSON.stringify(body) });

    expect((await approve('gated', {}, { by: 'mallory' })).status).toBe(403);
    expect((await approve('gated', { 'x-bbm-token': 'wrong-token-0123456789' }, { by: 'mallory' })).status).toBe(403);
    expect((await migrationRow(pool, 'gated'))?.status).toBe(MigrationStatus.awaiting_approval);
    await testWorker(pool, { work: [touch] }).run({ untilDone: true });
    expect((await pool.query('SELECT count(*)::int AS n FROM items WHERE touched > 0')).rows[0].n).toBe(0);

    expect((await approve('gated', { 'x-bbm-token': TOKEN }, { by: `dana ${HOSTILE}` })).status).toBe(200);
    expect((await approve('gated2', { 'x-bbm-token': TOKEN })).status).toBe(200);
    const approvals = await pool.query(
      'SELECT name, status, approved_by, approved_at IS NOT NULL AS dated FROM batched_background_migrations ORDER BY id',
    );
    expect(approvals.rows).toEqual([
      { name: 'gated', status: MigrationStatus.active, approved_by: `dana ${HOSTILE}`, dated: true },
      { name: 'gated2', status: MigrationStatus.active, approved_by: 'status page (127.0.0.1)', dated: true },
    ]);
    const detail = await (await fetch(`${base}/migrations/gated`)).text();
    expect(detail).toContain('approved by dana &#60;img src=x onerror=alert(1)&#62; at ');
    expect(detail).not.toContain(HOSTILE);

    await post('/api/migrations/gated2/pause', { 'x-bbm-token': TOKEN });
    expect((await post('/api/migrations/gated2/delete', { 'x-bbm-token': TOKEN })).status).toBe(400);
    const deleted = await fetch(`${base}/api/migrations/gated2/delete`, {
      method: 'POST',
      headers: { 'x-bbm-token': TOKEN },
      body: JSON.stringify({ confirm: 'gated2' }),
    });
    expect(deleted.status).toBe(200);
    expect(await migrationRow(pool, 'gated2')).toBeUndefined();
  });

  it("draws a migration's chart from its job rows: a point per job in each panel, failed jobs marked", async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 60));
    const failing = {
      name: touch.name,
      async do(job: Parameters<typeof touch.do>[0]) {
        await touch.do(job);
        if (job.start === 21n) throw new Error('no');
      },
    };
    await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 10 });
    await testWorker(pool, { work: [failing], maxAttempts: 1 }).run({ untilDone: true });
    const { base } = await serve(pool);
    const page = await (await fetch(`${base}/migrations/fill`)).text();
    const svg = /<svg class="chart"[^]*?<\/svg>/.exec(page)?.[0] ?? '';
    const panel = (id: string) => new RegExp(`<g class="\\w+" id="${id}">[^]*?</g>`).exec(svg)?.[0] ?? '';
    const finished = (
      await pool.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM batched_background_migration_jobs WHERE status = 2',
      )
    ).rows[0]!.n;
    expect(finished).toBe(5);
    for (const id of ['chart-rate', 'chart-dur']) {
      expect(panel(id).match(/<circle class="pt"/g), id).toHaveLength(finished);
      expect(panel(id).match(/<path class="failpt"/g), id).toHaveLength(1);
    }
    expect(svg).toContain('aria-label="rows per second and job duration over time, 5 jobs, 1 failed"');
  });

  it('shows the overview: counts by status, the live workers, and what waits for a work function', async () => {
    const { pool } = db();
    await enqueue(pool, { name: 'orphan', work: 'test.nobody_has_it', table: 'items', batchSize: 10 });
    await enqueue(pool, {
      name: 'resting',
      work: touch.name,
      table: 'items',
      batchSize: 10,
      status: MigrationStatus.paused,
    });
    await pool.query(
      "UPDATE batched_background_migrations SET on_hold_until = now() + interval '1 hour', hold_reason = 'replay_lag: 40 s' WHERE name = 'orphan'",
    );
    await pool.query(
      `INSERT INTO batched_background_migration_workers (id, hostname, pid, work_names) VALUES ('w1', 'host-${HOSTILE}', 4242, '{test.touch}')`,
    );
    const { base } = await serve(pool);
    const page = await (await fetch(`${base}/`)).text();
    expect(page).toMatch(/<li data-status="paused"><b>1<\/b>.*<li data-status="active"><b>1<\/b>/s);
    expect(page).toMatch(/<h2>Held back<\/h2><ul id="holds"><li><b>orphan<\/b>: replay_lag: 40 s \(until \d{4}-/);
    expect(page).toContain('<li><b>orphan</b> needs work function <code>test.nobody_has_it</code></li>');
    expect(page).toMatch(
      /<table id="workers">.*<td>host-&#60;img src=x onerror=alert\(1\)&#62;<\/td><td>4242<\/td><td>test\.touch<\/td><td title="[^"]+">\d+ s ago<\/td>/s,
    );
    expect(page).not.toContain(HOSTILE);
  });

  it('says why a migration runs in fewer lanes, and which workers rest their lanes: on the page, in bbm status and its --json', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 10));
    const names = ['starting', 'slowed', 'protected', 'older', 'whole'];
    for (const name of names) await enqueue(pool, { name, work: touch.name, table: 'items', batchSize: 10 });
    await pool.query('UPDATE batched_background_migrations SET max_parallel_jobs = 4');
    const idOf = async (name: string) => BigInt((await migrationRow(pool, name))!.id);
    // What the controllers write (latency-lanes.ts, commit-probes.ts), and a worker of 0.9.3 (no reason).
    expect(await startInOneLane(pool, await idOf('starting'))).toBe(true);
    expect(await shedLanes(pool, await idOf('slowed'), 'latency')).toMatchObject({ from: 4, to: 2 });
    expect(await shedLanes(pool, await idOf('protected'), 'commit latency')).toMatchObject({ from: 4, to: 2 });
    await pool.query("UPDATE batched_background_migrations SET lanes_allowed = 2 WHERE name = 'older'");
    await announceWorker(pool, {
      id: 'w1',
      hostname: 'resting-host',
      pid: 4242,
      workNames: [touch.name],
      dutyCycle: 0.5,
    });
    await announceWorker(pool, { id: 'w2', hostname: 'busy-host', pid: 4343, workNames: [touch.name], dutyCycle: 1 });

    const expected = {
      starting: 'slow start: 1 of 4 lanes, growing while jobs stay fast',
      slowed: 'latency: 2 of 4 lanes (its jobs took far longer per row than their norm)',
      protected: "commit latency: 2 of 4 lanes (the application's commits slowed beside its jobs)",
      older: 'latency: 2 of 4 lanes allowed',
    };
    const status = await bbm(['status'], { DATABASE_URL: url });
    for (const [name, text] of Object.entries(expected)) {
      const id = (await idOf(name)).toString();
      expect(status.out.split('\n').find((line) => line.startsWith(`${id} `))).toContain(text);
    }
    expect(status.out).toContain('worker resting-host pid 4242: commit latency: lanes run 50 % of the time');
    expect(status.out).not.toContain('busy-host');
    const json = JSON.parse((await bbm(['status', '--json'], { DATABASE_URL: url })).out) as Array<{
      name: string;
      lanesAllowed: number;
      lanesReason: string | null;
    }>;
    expect(json.map((m) => [m.name, m.lanesAllowed, m.lanesReason])).toEqual([
      ['starting', 1, 'slow start'],
      ['slowed', 2, 'latency'],
      ['protected', 2, 'commit latency'],
      ['older', 2, null],
      ['whole', 4, null],
    ]);

    const { base } = await serve(pool);
    const page = await (await fetch(`${base}/`)).text();
    const holds = /<ul id="holds">(.*?)<\/ul>/s.exec(page)?.[1] ?? '';
    for (const [name, text] of Object.entries(expected)) {
      expect(holds).toContain(`<li><b>${name}</b>: ${html(text)}</li>`);
      expect(page).toMatch(
        new RegExp(`<tr data-name="${name}".*?<td data-field="note" class="note">${escape(html(text))}</td>`, 's'),
      );
    }
    expect(holds).toContain('<li><b>worker resting-host pid 4242</b>: commit latency: lanes run 50 % of the time</li>');
    expect(holds).not.toContain('whole');
    expect(page).toMatch(
      /<td>resting-host<\/td>.*?<td data-field="duty-cycle" class="note">commit latency: lanes run 50 % of the time<\/td>/s,
    );
    expect(page).toMatch(/<td>busy-host<\/td>.*?<td data-field="duty-cycle" class="note"><\/td>/s);
    const detail = await (await fetch(`${base}/migrations/protected`)).text();
    expect(detail).toContain(html(expected.protected));

    // Grown back to all lanes: the reason goes with the allowance; an operator's lanes clear both.
    const slowed = await idOf('slowed');
    expect(await growLanes(pool, slowed)).toMatchObject({ from: 2, to: 3 });
    expect(await lanesRow(pool, 'slowed')).toEqual({ lanes_allowed: 3, lanes_reason: 'latency' });
    expect(await growLanes(pool, slowed)).toMatchObject({ from: 3, to: 4 });
    expect(await lanesRow(pool, 'slowed')).toEqual({ lanes_allowed: null, lanes_reason: null });
    expect(await setMigrationPace(pool, 'protected', { maxParallelJobs: 3 })).toBe(true);
    expect(await lanesRow(pool, 'protected')).toEqual({ lanes_allowed: null, lanes_reason: null });
    await recordDutyCycle(pool, 'w1', 1);
    expect((await bbm(['status'], { DATABASE_URL: url })).out).not.toContain('resting-host');
  });

  it('is read-only without a token, and says so', async () => {
    const { pool } = db();
    await enqueue(pool, { name: 'fill', work: touch.name, table: 'items', batchSize: 10 });
    const { post } = await serve(pool);
    const refused = await post('/api/migrations/fill/pause', { 'x-bbm-token': TOKEN });
    expect(refused.status).toBe(403);
    expect(await refused.json()).toMatchObject({ error: expect.stringMatching(/read-only/) });
    expect((await migrationRow(pool, 'fill'))?.status).toBe(MigrationStatus.active);
  });

  it("shows a finished migration's verification on its page", async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 40));
    const checked: Work = {
      ...touch,
      async verify(job) {
        const { rows } = await job.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM items WHERE id BETWEEN $1 AND $2 AND touched = 0',
          [job.start, job.end],
        );
        return rows[0]!.n;
      },
    };
    await enqueue(pool, { name: 'checked', work: touch.name, table: 'items', batchSize: 10 });
    await testWorker(pool, { work: [checked] }).run({ untilDone: true });
    expect((await migrationRow(pool, 'checked'))?.status).toBe(MigrationStatus.finished);
    const { base } = await serve(pool);
    const page = await (await fetch(`${base}/migrations/checked`)).text();
    expect(page).toMatch(
      /<p id="verification" data-live>verified at \d{4}-\d\d-\d\dT[\d:.]+Z: every range passed the check<\/p>/,
    );
  });

  it('rehearses with the token: the report answered, stored and shown with its projection; refused without it, or when finished', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 200));
    await enqueue(pool, {
      name: 'fill',
      work: touch.name,
      table: 'items',
      batchSize: 10,
      status: MigrationStatus.paused,
    });
    await enqueue(pool, {
      name: 'done',
      work: touch.name,
      table: 'items',
      batchSize: 10,
      status: MigrationStatus.finished,
    });
    const { base, post } = await serve(pool, TOKEN, { pool, work: [touch] });
    const detail = async () => (await fetch(`${base}/migrations/fill`)).text();
    const buttons = (page: string) => [...page.matchAll(/data-action="(\w+)"/g)].map((m) => m[1]);
    const before = await detail();
    expect(buttons(before)).toEqual(['resume', 'delete', 'rehearse']);
    expect(before).toContain(
      '<section id="rehearsal" data-live><h2>Last rehearsal</h2><p class="muted">Not rehearsed yet',
    );

    expect((await post('/api/migrations/fill/rehearse')).status).toBe(403);
    expect((await post('/api/migrations/fill/rehearse', { 'x-bbm-token': 'wrong-token-0123456789' })).status).toBe(403);
    expect(
      (await post('/api/migrations/fill/rehearse', { 'x-bbm-token': TOKEN, origin: 'http://evil.example' })).status,
    ).toBe(403);
    expect(await storedRehearsal(pool, 'fill')).toBeNull();

    const answered = await post('/api/migrations/fill/rehearse', { 'x-bbm-token': TOKEN, origin: base });
    expect(answered.status).toBe(200);
    const { report, ...rest } = (await answered.json()) as { report: RehearsalReport };
    expect(rest).toEqual({ action: 'rehearse', name: 'fill', changed: true });
    expect(report).toMatchObject({ migration: 'fill', status: 'paused', enqueued: true, failed: 0 });
    expect(report.samples).toHaveLength(10);
    expect(report.projection).toMatchObject({ lanes: 1, rows: 200, rowsBasis: 'counted', jobs: 20 });
    expect(await storedRehearsal(pool, 'fill')).toEqual(report);
    expect(await touchedRows(pool)).toBe(0); // each sample rolled back
    expect((await migrationRow(pool, 'fill'))?.status).toBe(MigrationStatus.paused);

    // Its page shows the projection as bbm rehearse prints it, the model's caveats included.
    const after = await detail();
    expect(after).toContain(
      `<h2>Last rehearsal</h2><p>At ${report.rehearsedAt}. Rehearsed fill (test.touch on public.items by id, batch 10, paused): 10 sample ranges, each rolled back.</p>`,
    );
    const projection = /<pre>([^]*?)<\/pre>/.exec(after)?.[1] ?? '';
    expect(projection).toMatch(/^Projected in one lane:\n {2}rows {9}200 \(counted\)\n {2}jobs {9}20 of 10 rows\n/);
    expect(projection).toMatch(/\n {2}duration {5}\d+ ms \([\d.]+ ms a row, and 3 ms a job for the engine\)\n/);
    expect(projection).toMatch(/\n {2}WAL {10}[\d.]+ (kB|MB)/);
    expect(projection).toMatch(/\n {2}dead tuples {2}200 for vacuum, /);

    // The JSON API and bbm status --json: the report without its samples, their count instead.
    const { samples: _samples, ...stored } = report;
    const summary = { ...stored, sampleCount: 10 };
    const listed = (await (await fetch(`${base}/api/migrations`)).json()) as Array<{
      name: string;
      rehearsal: unknown;
    }>;
    expect(listed.find((m) => m.name === 'fill')?.rehearsal).toEqual(summary);
    expect(listed.find((m) => m.name === 'done')?.rehearsal).toBeNull();
    const status = await bbm(['status', '--name', 'fill', '--json'], { DATABASE_URL: url });
    expect(status.code).toBe(0);
    expect((JSON.parse(status.out) as Array<{ rehearsal: unknown }>)[0]?.rehearsal).toEqual(summary);

    // Finished: not offered, and refused.
    expect(buttons(await (await fetch(`${base}/migrations/done`)).text())).toEqual(['delete']);
    const settled = await post('/api/migrations/done/rehearse', { 'x-bbm-token': TOKEN });
    expect(settled.status).toBe(409);
    expect(await settled.json()).toEqual({ error: 'done is finished: rehearse is not valid now (valid: delete)' });
    expect(await storedRehearsal(pool, 'done')).toBeNull();

    // A page without the work functions neither offers it nor does it.
    const { base: plain, post: postPlain } = await serve(pool, TOKEN);
    expect(buttons(await (await fetch(`${plain}/migrations/fill`)).text())).toEqual(['resume', 'delete']);
    const unable = await postPlain('/api/migrations/fill/rehearse', { 'x-bbm-token': TOKEN });
    expect(unable.status).toBe(409);
    expect(await unable.json()).toEqual({
      error: expect.stringContaining('cannot rehearse: it has no work functions'),
    });
  });

  it('refuses to rehearse a work with side effects, and a second rehearsal while one runs', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 100));
    const mailer: Work = { ...touch, name: 'test.mailer', sideEffects: true };
    // Its first sample waits for the test to let it go: a rehearsal in flight, for as long as needed.
    let started = false;
    let release = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    const slow: Work = {
      name: 'test.slow',
      async do(job) {
        started = true;
        await gate;
        await touch.do(job);
      },
    };
    for (const [name, work] of [
      ['mail', mailer.name],
      ['slow', slow.name],
      ['other', touch.name],
    ] as const)
      await enqueue(pool, { name, work, table: 'items', batchSize: 10, status: MigrationStatus.paused });
    const { base, post } = await serve(pool, TOKEN, { pool, work: [touch, mailer, slow] });
    const rehearse = (name: string) => post(`/api/migrations/${name}/rehearse`, { 'x-bbm-token': TOKEN });

    const refused = await rehearse('mail');
    expect(refused.status).toBe(422);
    expect(await refused.json()).toEqual({
      error: expect.stringContaining('mail runs work function test.mailer, which acts outside the database'),
    });
    expect(await storedRehearsal(pool, 'mail')).toBeNull();

    const first = rehearse('slow');
    await waitFor(async () => started, 'the first sample to start');
    for (const name of ['slow', 'other']) {
      const second = await rehearse(name);
      expect(second.status, name).toBe(409);
      expect(await second.json()).toEqual({ error: 'a rehearsal of slow is running from this page: one at a time' });
    }
    expect((await fetch(`${base}/migrations/slow`)).status).toBe(200); // the page still answers meanwhile
    release();
    expect((await first).status).toBe(200);
    expect(await storedRehearsal(pool, 'slow')).toMatchObject({ migration: 'slow', failed: 0 });
    expect((await rehearse('other')).status).toBe(200);
    expect(await touchedRows(pool)).toBe(0);
  });
});
