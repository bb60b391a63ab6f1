/**
 * The status page in a real browser: headless Chromium (Debian's `chromium` package) driven by
 * puppeteer-core, which downloads nothing. Without a Chromium at CHROMIUM_PATH (default
 * /usr/bin/chromium) the file is skipped, loudly; CI installs it and sets BBM_REQUIRE_BROWSER=1,
 * which turns a missing browser into a failure.
 */
import { existsSync } from 'node:fs';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { startOpsServer } from '../src/bbm/ops-server.ts';
import { createStatusPage } from '../src/bbm/status-page.ts';
import { ACTIONS_BY_STATUS, MigrationStatus, type MigrationStatusName } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, enqueue, migrationRow, quiet, range, testWorker, touch } from './support/engine.ts';
import { waitFor } from './support/processes.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const available = existsSync(CHROMIUM);
if (!available && process.env.BBM_REQUIRE_BROWSER)
  throw new Error(`no Chromium at ${CHROMIUM}, and BBM_REQUIRE_BROWSER is set`);
if (!available)
  console.warn(`browser tests skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);

const TOKEN = 'operator-token-0123456789';
/** The docs' pictures: BBM_SCREENSHOTS=docs npx vitest run test/browser.test.ts */
const SCREENSHOTS = process.env.BBM_SCREENSHOTS;
const HOSTILE = '<img src=x onerror=alert(1)>';

describe.skipIf(!available)('the status page in Chromium', () => {
  const db = useTestDatabase();
  let browser: Browser;
  beforeAll(async () => {
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
  });
  afterAll(async () => {
    await browser?.close();
  });

  async function open(url: string): Promise<{ page: Page; alerts: string[] }> {
    const page = await browser.newPage();
    onTestFinished(() => page.close());
    const alerts: string[] = [];
    page.on('dialog', (dialog) => {
      alerts.push(dialog.message());
      void dialog.dismiss();
    });
    await page.setViewport({ width: 390, height: 844 }); // a phone
    await page.goto(url, { waitUntil: 'load' });
    return { page, alerts };
  }

  const text = (page: Page, selector: string) => page.$eval(selector, (element) => element.textContent ?? '');

  it('follows a worker live, pauses and resumes with the token, is refused without it, and shows hostile names as text', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 3000));
    await enqueue(pool, { name: HOSTILE, work: touch.name, table: 'items', batchSize: 10 });
    const server = await startOpsServer({
      page: createStatusPage({ db: pool, token: TOKEN, log: quiet }),
      db: pool,
      port: 0,
    });
    onTestFinished(() => server.close());
    const { page, alerts } = await open(`http://${server.host}:${server.port}/`);

    // The name is text: no <img> was made of it, and no script ran.
    expect(await text(page, '#migrations tbody a')).toBe(HOSTILE);
    expect(await page.$$('img')).toHaveLength(0);
    expect(alerts).toEqual([]);

    // Live: the progress shown changes while a worker drains the migration, without a reload.
    const worker = testWorker(pool, { work: [touch], pauseMs: 15 });
    const running = worker.run();
    onTestFinished(() => worker.stop());
    const progress = () => text(page, '[data-field=progress]');
    const first = await waitFor(
      async () => ((await progress()) !== '0.0%' ? await progress() : undefined),
      'progress to show',
      20_000,
    );
    await waitFor(async () => ((await progress()) !== first ? true : undefined), 'progress to move on', 20_000);

    // Refused without the token: the page says so, and nothing changes.
    await page.click('button[data-action=pause]');
    await waitFor(async () => ((await text(page, '#message')).includes('refused') ? true : undefined), 'the refusal');
    expect((await migrationRow(pool, HOSTILE))?.status).toBe(MigrationStatus.running);

    // With the token: paused, and the worker takes no more of its jobs.
    await page.type('#token', TOKEN);
    await page.click('button[data-action=pause]');
    await waitFor(
      async () => ((await text(page, '[data-field=status]')) === 'paused' ? true : undefined),
      'the page to show paused',
    );
    expect((await migrationRow(pool, HOSTILE))?.status).toBe(MigrationStatus.paused);
    const done = async () =>
      (
        await pool.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM batched_background_migration_jobs WHERE status = 2',
        )
      ).rows[0]!.n;
    const atPause = await done();
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(await done()).toBeLessThanOrEqual(atPause + 1); // the job in flight may finish; no next one starts

    await page.click('button[data-action=resume]');
    await waitFor(
      async () => ((await migrationRow(pool, HOSTILE))?.status === MigrationStatus.finished ? true : undefined),
      'the migration to finish',
      30_000,
    );
    await waitFor(
      async () => ((await text(page, '[data-field=status]')) === 'finished' ? true : undefined),
      'the page to show finished',
    );
    expect(await progress()).toBe('100.0%');
    if (SCREENSHOTS) {
      await page.evaluate("document.querySelector('.wrap')?.scrollTo(0, 0)");
      await page.screenshot({ path: `${SCREENSHOTS}/status-page-phone.png`, fullPage: true });
    }
    await worker.stop();
    await running;
    expect(alerts).toEqual([]);
  });

  it('offers only the actions valid for each state; approves with the token; deletes after a confirmation', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 3000));
    // A finished migration with a job history for the chart (one range fails once, then succeeds).
    let failedOnce = false;
    const flaky = {
      name: touch.name,
      async do(job: Parameters<typeof touch.do>[0]) {
        await touch.do(job);
        if (job.start === 1201n && !failedOnce) {
          failedOnce = true;
          throw new Error('deadlock detected');
        }
      },
    };
    await enqueue(pool, { name: 'backfill_email_lower', work: touch.name, table: 'items', batchSize: 100 });
    await testWorker(pool, { work: [flaky], maxAttempts: 3 }).run({ untilDone: true });
    const scene: [string, MigrationStatusName][] = [
      ['copy_order_ids', 'running'],
      ['fill_user_locale', 'active'],
      ['rewrite_invoices', 'awaiting_approval'],
      ['resize_avatars', 'paused'],
      ['fix_totals', 'failed'],
    ];
    for (const [name, status] of scene)
      await enqueue(pool, { name, work: touch.name, table: 'items', batchSize: 500, status: MigrationStatus[status] });
    await pool.query(
      "UPDATE batched_background_migrations SET failure_error_code = 4, failure_message = 'job 7 [3001..3500] failed 3 times; last error: division by zero' WHERE name = 'fix_totals'",
    );
    await pool.query(
      "UPDATE batched_background_migrations SET on_hold_until = now() + interval '40 seconds', hold_reason = 'replay_lag: standby 12 s behind' WHERE name = 'copy_order_ids'",
    );
    await pool.query(
      "INSERT INTO batched_background_migration_workers (id, hostname, pid, work_names) VALUES ('w1', 'worker-7c9f-abc', 41, '{test.touch}'), ('w2', 'worker-7c9f-def', 39, '{test.touch}')",
    );
    const server = await startOpsServer({
      page: createStatusPage({ db: pool, token: TOKEN, log: quiet }),
      db: pool,
      port: 0,
    });
    onTestFinished(() => server.close());
    const base = `http://${server.host}:${server.port}`;
    const { page, alerts } = await open(`${base}/`);
    await page.setViewport({ width: 1280, height: 900 }); // a desktop

    const shown = () =>
      page.$$eval('#migrations tr[data-name]', (rows) =>
        rows.map((row) => [
          row.getAttribute('data-name'),
          row.querySelector('[data-field=status]')?.textContent,
          [...row.querySelectorAll('button[data-action]')].map((b) => b.getAttribute('data-action')),
        ]),
      );
    const expected = [['backfill_email_lower', 'finished'] as [string, MigrationStatusName], ...scene].map(
      ([name, status]) => [name, status, ACTIONS_BY_STATUS[status]],
    );
    expect(await shown()).toEqual(expected);

    // Approve: refused without the token, then done with it, recorded under the name typed.
    const button = (name: string, action: string) => `#migrations tr[data-name=${name}] button[data-action=${action}]`;
    await page.click(button('rewrite_invoices', 'approve'));
    await waitFor(async () => ((await text(page, '#message')).includes('refused') ? true : undefined), 'the refusal');
    expect((await migrationRow(pool, 'rewrite_invoices'))?.status).toBe(MigrationStatus.awaiting_approval);
    await page.type('#token', TOKEN);
    await page.type('#operator', 'dana');
    await page.click(button('rewrite_invoices', 'approve'));
    await waitFor(
      async () =>
        (await migrationRow(pool, 'rewrite_invoices'))?.status === MigrationStatus.active ? true : undefined,
      'the approval',
    );
    await waitFor(
      async () => ((await page.$(button('rewrite_invoices', 'pause'))) ? true : undefined),
      'pause offered once it is active',
    );
    expect(await page.$(button('rewrite_invoices', 'approve'))).toBeNull();
    const { rows } = await pool.query(
      "SELECT approved_by FROM batched_background_migrations WHERE name = 'rewrite_invoices'",
    );
    expect(rows).toEqual([{ approved_by: 'dana' }]);

    // Delete asks first: dismissed, nothing is deleted; accepted, it is.
    page.removeAllListeners('dialog');
    let answer = false;
    const asked: string[] = [];
    page.on('dialog', (dialog) => {
      asked.push(dialog.message());
      void (answer ? dialog.accept() : dialog.dismiss());
    });
    await page.click(button('resize_avatars', 'delete'));
    await waitFor(async () => (asked.length === 1 ? true : undefined), 'the confirmation');
    expect(asked[0]).toBe('Delete resize_avatars and all its jobs? This cannot be undone.');
    expect(await migrationRow(pool, 'resize_avatars')).toBeDefined();
    answer = true;
    await page.click(button('resize_avatars', 'delete'));
    await waitFor(async () => ((await migrationRow(pool, 'resize_avatars')) ? undefined : true), 'the delete');
    await waitFor(async () => ((await page.$('tr[data-name=resize_avatars]')) ? undefined : true), 'the row to go');

    if (SCREENSHOTS) {
      await page.evaluate("document.getElementById('message').textContent = ''");
      await page.screenshot({ path: `${SCREENSHOTS}/status-page.png`, fullPage: true });
      await page.goto(`${base}/migrations/backfill_email_lower`, { waitUntil: 'load' });
      await page.screenshot({ path: `${SCREENSHOTS}/status-page-migration.png`, fullPage: true });
    }
    // The migration's page draws its chart: a point per finished job.
    await page.goto(`${base}/migrations/backfill_email_lower`, { waitUntil: 'load' });
    expect(await page.$$('#chart-rate circle.pt')).toHaveLength(30);
    expect(alerts).toEqual([]);
  });

  it('rehearses a paused migration from its page with the token, and shows the projection', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 2000));
    await enqueue(pool, {
      name: 'resize_avatars',
      work: touch.name,
      table: 'items',
      batchSize: 100,
      status: MigrationStatus.paused,
    });
    const server = await startOpsServer({
      page: createStatusPage({ db: pool, token: TOKEN, log: quiet, rehearse: { pool, work: [touch] } }),
      db: pool,
      port: 0,
    });
    onTestFinished(() => server.close());
    const { page, alerts } = await open(`http://${server.host}:${server.port}/migrations/resize_avatars`);
    await page.setViewport({ width: 1280, height: 900 });
    const offered = await page.$$eval('#migrations button[data-action]', (buttons) =>
      buttons.map((b) => b.getAttribute('data-action')),
    );
    expect(offered).toEqual(['resume', 'delete', 'rehearse']);
    expect(await text(page, '#rehearsal')).toContain('Not rehearsed yet');

    await page.type('#token', TOKEN);
    await page.click('button[data-action=rehearse]');
    await waitFor(
      async () => ((await text(page, '#rehearsal')).includes('Projected in one lane:') ? true : undefined),
      'the projection to show',
    );
    expect(await text(page, '#message')).toBe('rehearse: resize_avatars');
    expect(await text(page, '#rehearsal pre')).toMatch(/^ {2}jobs {9}20 of 100 rows$/m);
    expect((await pool.query('SELECT count(*)::int AS n FROM items WHERE touched > 0')).rows[0].n).toBe(0);
    expect((await migrationRow(pool, 'resize_avatars'))?.status).toBe(MigrationStatus.paused);
    expect(alerts).toEqual([]);
  });
});
