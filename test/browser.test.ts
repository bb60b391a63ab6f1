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
import { MigrationStatus } from '../src/store/codes.ts';
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
    if (process.env.BBM_SCREENSHOT) {
      // The README's picture (BBM_SCREENSHOT=docs/status-page.png npx vitest run test/browser.test.ts).
      await page.evaluate("document.querySelector('.wrap')?.scrollTo(0, 0)");
      await page.screenshot({ path: process.env.BBM_SCREENSHOT });
    }
    await worker.stop();
    await running;
    expect(alerts).toEqual([]);
  });
});
