/** Approval: a migration enqueued awaiting approval is taken by no worker until someone approves it. */
import { describe, expect, it, onTestFinished } from 'vitest';
import { enqueueMigration } from '../src/bbm/enqueue.ts';
import { migrationReports, pause, resume } from '../src/bbm/status.ts';
import { ACTIONS_BY_STATUS, MigrationStatus, type MigrationStatusName } from '../src/store/codes.ts';
import { approveMigration } from '../src/store/approvals.ts';
import { deleteMigration, retryMigration } from '../src/store/migration-rows.ts';
import { bbm } from './support/cli.ts';
import { useTestDatabase } from './support/database.ts';
import {
  createItems,
  drain,
  enqueue,
  expectEveryRowOnce,
  migrationRow,
  range,
  testWorker,
  touch,
} from './support/engine.ts';

describe('approval', () => {
  const db = useTestDatabase();

  it('holds a migration from a running worker until `bbm approve`, which records who; then it is drained, every row once', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 500));
    await enqueueMigration(pool, {
      name: 'fill',
      work: touch.name,
      table: 'items',
      column: 'id',
      batchSize: 50,
      needsApproval: true,
    });
    expect((await migrationRow(pool, 'fill'))?.status).toBe(MigrationStatus.awaiting_approval);

    const worker = testWorker(pool, { work: [touch] });
    const running = worker.run();
    onTestFinished(() => worker.stop());
    // Long enough for many idle runs (intervalMs 20, at most 100 between them).
    await new Promise((resolve) => setTimeout(resolve, 600));
    const jobs = async () =>
      (await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM batched_background_migration_jobs')).rows[0]!.n;
    expect(await jobs()).toBe(0);
    expect((await pool.query('SELECT count(*)::int AS n FROM items WHERE touched > 0')).rows[0].n).toBe(0);

    const env = { DATABASE_URL: url };
    const listed = await bbm(['status'], env);
    expect(listed.out).toMatch(/fill\s+awaiting_approval/);
    expect(listed.out).toContain('awaiting approval: fill (no worker takes them until `bbm approve --name NAME`)');

    const approved = await bbm(['approve', '--name', 'fill', '--by', 'alice'], env);
    expect(approved).toMatchObject({ code: 0, err: '' });
    expect(approved.out).toMatch(/^approved fill as alice at \d{4}-/);

    for (let i = 0; i < 200 && (await migrationRow(pool, 'fill'))?.status !== MigrationStatus.finished; i += 1)
      await new Promise((resolve) => setTimeout(resolve, 50));
    await worker.stop();
    await running;
    await expectEveryRowOnce(pool, 'items', 'fill');

    const [report] = await migrationReports(pool, { name: 'fill' });
    expect(report).toMatchObject({ status: 'finished', approvedBy: 'alice', approvedAt: expect.any(Date) });
    const json = JSON.parse((await bbm(['status', '--json'], env)).out) as Array<Record<string, unknown>>;
    expect(json[0]).toMatchObject({ approvedBy: 'alice', approvedAt: expect.stringMatching(/^\d{4}-/) });
    expect((await bbm(['status'], env)).out).toMatch(/approved by alice at \d{4}-/);
  });

  it('takes a status set by a plain SQL insert, and the approver from BBM_OPERATOR', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 30));
    await enqueue(pool, { name: 'by_sql', work: touch.name, table: 'items', batchSize: 10, status: 5 });
    await drain(testWorker(pool, { work: [touch] }));
    expect((await migrationRow(pool, 'by_sql'))?.status).toBe(MigrationStatus.awaiting_approval);

    expect(
      await bbm(['approve', '--name', 'by_sql', '--json'], { DATABASE_URL: url, BBM_OPERATOR: 'ops-bot' }),
    ).toMatchObject({ code: 0, out: expect.stringContaining('"approvedBy": "ops-bot"') });
    await drain(testWorker(pool, { work: [touch] }));
    await expectEveryRowOnce(pool, 'items', 'by_sql');
  });

  it('refuses an unknown name and a migration not awaiting approval, with exit 1 and a clear message', async () => {
    const { pool, url } = db();
    const env = { DATABASE_URL: url };
    await enqueue(pool, { name: 'live', work: touch.name, table: 'items', batchSize: 10 });
    await enqueue(pool, { name: 'gated', work: touch.name, table: 'items', batchSize: 10, status: 5 });

    expect(await bbm(['approve', '--name', 'ghost'], env)).toEqual({
      code: 1,
      out: '',
      err: 'bbm approve: no migration named "ghost"\n',
    });
    expect(await bbm(['approve', '--name', 'live'], env)).toEqual({
      code: 1,
      out: '',
      err: 'bbm approve: live is active; only a migration awaiting approval can be approved\n',
    });
    expect((await bbm(['approve', '--name', 'gated', '--by', 'bob'], env)).code).toBe(0);
    expect(await bbm(['approve', '--name', 'gated', '--by', 'carol'], env)).toEqual({
      code: 1,
      out: '',
      err: 'bbm approve: gated is active (approved by bob); only a migration awaiting approval can be approved\n',
    });
    expect((await bbm(['approve'], env)).code).toBe(2);
    expect((await bbm(['approve', '--name', 'gated', '--by', ' '], env)).code).toBe(2);
  });

  it('enqueues awaiting approval from the CLI, and refuses it with --paused', async () => {
    const { pool, url } = db();
    await createItems(pool, 'items', range(1, 10));
    const env = { DATABASE_URL: url };
    const args = [
      'enqueue',
      '--name',
      'gate',
      '--work',
      touch.name,
      '--table',
      'items',
      '--column',
      'id',
      '--batch-size',
      '5',
    ];
    expect((await bbm([...args, '--needs-approval', '--paused'], env)).code).toBe(2);
    const enqueued = await bbm([...args, '--needs-approval'], env);
    expect(enqueued).toMatchObject({ code: 0 });
    expect(enqueued.out).toContain('awaiting approval (bbm approve --name gate)');
    expect((await migrationRow(pool, 'gate'))?.status).toBe(MigrationStatus.awaiting_approval);
    expect((await bbm([...args, '--needs-approval', '--dry-run'], env)).out).toContain('5 /* awaiting_approval */');
  });

  /** Every status: the takes take only runnable ones, and what the store lets an operator do is ACTIONS_BY_STATUS. */
  it.each(Object.keys(MigrationStatus) as MigrationStatusName[])('walks status %s', async (status) => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 20));
    const fresh = async (name: string) => {
      await enqueue(pool, { name, work: touch.name, table: 'items', batchSize: 10, status: MigrationStatus[status] });
      return name;
    };
    await fresh('untouched');
    await drain(testWorker(pool, { work: [touch] }));
    const touched = (await pool.query('SELECT count(*)::int AS n FROM items WHERE touched > 0')).rows[0].n;
    expect(touched > 0).toBe(status === 'active' || status === 'running');
    const did: Record<string, boolean> = {
      pause: (await pause(pool, await fresh('p'))).length > 0,
      resume: (await resume(pool, await fresh('r'))).length > 0,
      retry: (await retryMigration(pool, await fresh('t'))) !== null,
      approve: (await approveMigration(pool, await fresh('a'), 'x')) !== null,
      delete: (await deleteMigration(pool, await fresh('d'))).deleted,
    };
    expect(Object.keys(did).filter((action) => did[action])).toEqual(
      ['pause', 'resume', 'retry', 'approve', 'delete'].filter((a) =>
        (ACTIONS_BY_STATUS[status] as string[]).includes(a),
      ),
    );
  });
});
