/**
 * Several hosts in the database URL, as libpq takes them: the parser, and a worker that finds the
 * primary among them, skips a standby, and finds the new primary after a failover.
 */
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../src/bbm/errors.ts';
import { migrateSchema } from '../src/store/apply-schema.ts';
import { createPool, maskConnectionString, passwordOf } from '../src/store/db.ts';
import { parseConnectionTarget } from '../src/store/hosts.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { createItems, enqueue, expectEveryRowOnce, migrationRow, range } from './support/engine.ts';
import { startBbm, waitFor } from './support/processes.ts';
import { startReplicatedPair, type ReplicatedPair } from './support/replication.ts';

const DEFAULTS_CONFIG = fileURLToPath(new URL('./fixtures/defaults.config.ts', import.meta.url));

describe('a connection string naming several hosts', () => {
  it('in the URL form: the hosts in order, a connection string to the first, read-write by default', () => {
    expect(parseConnectionTarget('postgres://u:p%40ss@h1:5432,h2:5433/app?sslmode=disable')).toEqual({
      kind: 'several',
      connectionString: 'postgres://u:p%40ss@h1:5432/app?sslmode=disable',
      hosts: [
        { host: 'h1', port: 5432 },
        { host: 'h2', port: 5433 },
      ],
      targetSessionAttrs: 'read-write',
    });
    const v6 = parseConnectionTarget('postgresql://[::1]:6000,db.internal/app?target_session_attrs=any');
    expect(v6).toMatchObject({
      connectionString: 'postgresql://[::1]:6000/app',
      hosts: [
        { host: '::1', port: 6000 },
        { host: 'db.internal', port: 5432 },
      ],
      targetSessionAttrs: 'any',
    });
  });

  it("in the keyword form: one port for all hosts or one each, quoted values, the rest as a URL's parameters", () => {
    const several = parseConnectionTarget(
      `host=h1,h2 port=5432,5433 dbname=app user=me password='a b\\'c' application_name = x target_session_attrs=primary`,
    );
    expect(several).toEqual({
      kind: 'several',
      connectionString: "postgresql://me:a%20b'c@h1:5432/app?application_name=x",
      hosts: [
        { host: 'h1', port: 5432 },
        { host: 'h2', port: 5433 },
      ],
      targetSessionAttrs: 'primary',
    });
    expect(parseConnectionTarget('host=h1,h2,h3 port=6000 dbname=app')).toMatchObject({
      hosts: [6000, 6000, 6000].map((port, i) => ({ host: `h${i + 1}`, port })),
    });
  });

  it('with one host, is given to node-postgres as before (a keyword string as the URL it means)', () => {
    for (const url of [
      'postgres://u:p@h1:5432/app?sslmode=disable',
      'postgresql://u@h1/app',
      '/var/run/postgresql app',
      'socket:/var/run/postgresql?db=app',
    ]) {
      expect(parseConnectionTarget(url)).toEqual({ kind: 'single', connectionString: url });
    }
    expect(parseConnectionTarget("host=h1 port=5433 dbname=app user=me password='p w'")).toEqual({
      kind: 'single',
      connectionString: 'postgresql://me:p%20w@h1:5433/app',
    });
  });

  it('refuses bad lists with a ConfigError that names the fault and never the password', () => {
    const bad: Array<[string, RegExp]> = [
      ['postgres://u:secret@h1,,h2/app', /host 2 of 3 in the database URL is empty/],
      ['postgres://u:secret@h1:54x2,h2/app', /host 1 of 2 in the database URL has port "54x2": not a port number/],
      ['postgres://u:secret@h1:70000,h2/app', /not a port number/],
      ['postgres://u:secret@h1,h2/app?target_session_attrs=standby', /target_session_attrs=standby is not supported/],
      ['postgres://u:secret@h1,h2/app?target_session_attrs=prefer-standby', /prefer-standby is not supported/],
      ['postgres://u:secret@h1,h2/app?host=h3', /also a "host" parameter/],
      ['postgres://u:sec,re/t@h1,h2/app', /percent-encode it/],
      ["host=h1,h2 port=1,2,3 password='secret'", /names 2 host\(s\) and 3 ports/],
      ["host=h1 password='secret", /leaves the quoted value of "password" open/],
      ['host=h1,h2 password secret', /no "=" after "password"/],
      ['host=h1,h2 hostaddr=10.0.0.1 password=secret', /hostaddr is not supported/],
    ];
    for (const [url, message] of bad) {
      let thrown: unknown;
      try {
        parseConnectionTarget(url);
      } catch (error) {
        thrown = error;
      }
      expect(thrown, url).toBeInstanceOf(ConfigError);
      expect((thrown as Error).message, url).toMatch(message);
      expect((thrown as Error).message, url).not.toMatch(/secret|sec,re/);
    }
    expect(() => createPool({ connectionString: 'postgres://u:secret@h1:0,h2/app' })).toThrow(ConfigError);
  });

  it('masks the password of either form in logs, and finds it for redaction', () => {
    const url = 'postgres://me:s3cret@h1:5432,h2:5433/app';
    expect(maskConnectionString(url)).toBe('postgres://me:***@h1:5432,h2:5433/app');
    expect(passwordOf(url)).toBe('s3cret');
    const keywords = "host=h1,h2 user=me password='s3 cret' dbname=app";
    expect(maskConnectionString(keywords)).toBe('host=h1,h2 user=me password=*** dbname=app');
    expect(passwordOf(keywords)).toBe('s3 cret');
  });
});

describe('a primary and a streaming standby, named standby first', () => {
  let pair: ReplicatedPair | undefined;
  beforeAll(async () => {
    pair = await startReplicatedPair();
    await pair.streaming();
  }, 60_000);
  afterAll(async () => {
    await pair?.cleanup();
  });
  const servers = () => {
    if (!pair) throw new Error('the servers are not started');
    return pair;
  };
  /** Both servers, the standby first, as one URL. */
  const bothUrl = () => {
    const { standby, primary } = servers();
    return standby.url().replace(`:${standby.port}/`, `:${standby.port},127.0.0.1:${primary.port}/`);
  };

  /** Makes the primary's sessions read-only or not, as a demoted primary's are, and waits until a new one sees it. */
  async function primaryReadOnly(on: boolean): Promise<void> {
    const { primary } = servers();
    const admin = new pg.Client(primary.url());
    await admin.connect();
    try {
      await admin.query(
        `ALTER SYSTEM ${on ? 'SET default_transaction_read_only = on' : 'RESET default_transaction_read_only'}`,
      );
      await admin.query('SELECT pg_reload_conf()');
    } finally {
      await admin.end();
    }
    await waitFor(async () => {
      const probe = new pg.Client(primary.url());
      await probe.connect();
      try {
        return (await probe.query('SHOW transaction_read_only')).rows[0].transaction_read_only === (on ? 'on' : 'off');
      } finally {
        await probe.end();
      }
    }, 'the reload');
  }

  it('a pool connects to the primary, and drops a connection whose server turned read-only (25006)', async () => {
    const { primary } = servers();
    const pool = createPool({ connectionString: bothUrl(), max: 2 });
    const where = 'SELECT inet_server_port() AS port, pg_is_in_recovery() AS standby';
    try {
      expect((await pool.query(where)).rows).toEqual([{ port: primary.port, standby: false }]);
      const client = await pool.connect();
      // The session uses the server's default: it turns read-only at the reload.
      await primaryReadOnly(true);
      const write = await client.query('CREATE TEMP TABLE t (x int)').catch((error: unknown) => error);
      expect(write).toMatchObject({ code: '25006' });
      client.release();
      // pg-pool would lend it again; it ended at the error and is dropped, and no server of the list will do.
      expect(pool.totalCount).toBe(0);
      await expect(pool.query('SELECT 1')).rejects.toMatchObject({
        code: '08001',
        message: expect.stringMatching(/is a standby.*takes no writes/) as unknown,
      });
      await primaryReadOnly(false);
      expect((await pool.query(where)).rows).toEqual([{ port: primary.port, standby: false }]);
    } finally {
      await pool.end();
      await primaryReadOnly(false);
    }
  });

  it('bbm run finds the new primary after a failover and finishes the migration there, every row once', async () => {
    const { primary, standby } = servers();
    const setup = createPool({ connectionString: primary.url(), max: 2 });
    try {
      await migrateSchema(setup);
      await createItems(setup, 'items', range(1, 20_000));
      await enqueue(setup, { name: 'fill', work: 'test.touch', table: 'items', batchSize: 25 });
    } finally {
      await setup.end();
    }
    // Progress is read on the standby: what it shows is what survives the failover.
    const onStandby = createPool({ connectionString: standby.url(), max: 1 });
    const worker = startBbm(['run', '--skip-migrate', '--interval', '200', '--config', DEFAULTS_CONFIG], {
      DATABASE_URL: bothUrl(),
      BBM_LOG_LEVEL: 'info',
      BBM_LOG_FORMAT: 'json',
    });
    // Until the standby has replayed the table's creation (42P01), it has nothing touched to count.
    const touched = () =>
      onStandby.query<{ n: number }>('SELECT count(*)::int AS n FROM items WHERE touched > 0').then(
        (result) => result.rows[0]!.n,
        (error: { code?: string }) => {
          if (error.code === '42P01') return 0;
          throw error;
        },
      );
    try {
      const before = await waitFor(
        async () => (await touched()) >= 4_000 && (await touched()),
        'a fifth of the rows',
        20_000,
      );
      // The primary's host dies; the standby is promoted in its place.
      await primary.crash();
      await onStandby.query('SELECT pg_promote(wait => true)');
      const atPromotion = await touched();
      expect(atPromotion).toBeGreaterThanOrEqual(before);
      expect(atPromotion, 'the worker had finished before the failover').toBeLessThan(20_000);

      await waitFor(
        async () => (await migrationRow(onStandby, 'fill'))?.status === MigrationStatus.finished,
        'the migration to finish on the new primary',
        25_000,
      );
      expect(worker.child.exitCode, worker.output().slice(-3_000)).toBeNull();
      await expectEveryRowOnce(onStandby, 'items', 'fill');
      const { rows: failed } = await onStandby.query(
        'SELECT name FROM batched_background_migrations WHERE status = $1',
        [MigrationStatus.failed],
      );
      expect(failed).toEqual([]);
      expect(worker.output()).not.toContain(passwordOf(bothUrl())!);
      worker.child.kill('SIGTERM');
      const { code } = await worker.exited;
      expect(code, worker.output().slice(-3_000)).toBe(0);
    } finally {
      if (worker.child.exitCode === null) worker.child.kill('SIGKILL');
      await onStandby.end();
    }
  }, 60_000);
});
