/**
 * Every kind of key under a fleet of `bbm run` processes (the compiled CLI) in two lanes each,
 * killed with SIGKILL mid-job and restarted: a migration inserted by plain SQL with only its key's
 * name finishes with every row touched exactly once, and its ranges (as stored, and as the work
 * saw them) tile the key space in the key's own order, with no gap and no overlap.
 */
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { createKeyLog, expectTiled, insertKeyMigration, type KeySpace } from './support/keys.ts';
import { startBbm, waitFor, type BbmProcess } from './support/processes.ts';

const KEYS_CONFIG = fileURLToPath(new URL('./fixtures/keys.config.ts', import.meta.url));
const JOB_SLEEP_MS = 30;
const KILLS = 2;

interface KeyCase {
  kind: string;
  setup: string;
  column: string;
  space: KeySpace;
  /** SQL that must hold of the table for the case to test what it says (a byte order that differs, repeats). */
  premise?: string;
}

/** A v7 uuid (RFC 9562): 48 bits of Unix milliseconds, then random bits, its version nibble 7. */
const uuidV7 = (ms: string) =>
  `encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing substring(int8send(${ms}) from 3) from 1 for 6), 52, 1), 53, 1), 'hex')::uuid`;

const cases: KeyCase[] = [
  {
    kind: 'uuid v4 (random)',
    setup: `CREATE TABLE k (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0);
            INSERT INTO k SELECT FROM generate_series(1, 1500)`,
    column: 'id',
    space: { table: 'k', columns: ['id'], types: ['uuid'] },
  },
  {
    kind: 'uuid v7 (time-ordered, four a millisecond)',
    setup: `CREATE TABLE k (id uuid PRIMARY KEY, touched int NOT NULL DEFAULT 0);
            INSERT INTO k (id) SELECT ${uuidV7(`(extract(epoch FROM '2026-01-01'::timestamptz) * 1000)::bigint + i / 4`)}
            FROM generate_series(1, 1500) i`,
    column: 'id',
    space: { table: 'k', columns: ['id'], types: ['uuid'] },
    premise: `SELECT bool_and(substr(id::text, 15, 1) = '7') FROM k`,
  },
  {
    kind: 'text in und-x-icu (case and accents)',
    setup: `CREATE TABLE k (code text COLLATE "und-x-icu" PRIMARY KEY, touched int NOT NULL DEFAULT 0);
            INSERT INTO k (code) SELECT w || i FROM generate_series(1, 100) i,
              unnest(ARRAY['a', 'A', 'á', 'Ä', 'b', 'B', 'é', 'E', 'e', 'ß', 'ss', 'z', 'Z', 'Œ', 'oe']) w`,
    column: 'code',
    space: { table: 'k', columns: ['code'], types: ['text COLLATE "und-x-icu"'] },
    // In byte order ("C") the rows come in another order: ranges compared so would skip or repeat rows.
    premise: `SELECT array_agg(code ORDER BY code) <> array_agg(code ORDER BY code COLLATE "C") FROM k`,
  },
  {
    kind: "timestamptz that repeats, with id ('created_at,id')",
    setup: `CREATE TABLE k (created_at timestamptz NOT NULL, id bigint NOT NULL, touched int NOT NULL DEFAULT 0,
                            PRIMARY KEY (created_at, id));
            INSERT INTO k (created_at, id)
            SELECT '2026-01-01 00:00:00.123456+00'::timestamptz + (i / 35) * interval '1 second', (i * 7919) % 1511
            FROM generate_series(1, 1500) i`,
    column: 'created_at,id',
    space: { table: 'k', columns: ['created_at', 'id'], types: ['timestamptz', 'bigint'] },
    premise: `SELECT max(n) >= 35 FROM (SELECT count(*) AS n FROM k GROUP BY created_at) g`,
  },
  {
    kind: 'numeric with scales (1.5 and 1.50, 10, -3) and repeats',
    setup: `CREATE TABLE k (amount numeric NOT NULL, touched int NOT NULL DEFAULT 0);
            CREATE INDEX ON k (amount);
            INSERT INTO k (amount) SELECT round((i % 401 - 150)::numeric / 4, i % 3) FROM generate_series(1, 1500) i;
            INSERT INTO k (amount) VALUES (1.5), (1.50), (1.500), (10), (10.0), (-3), (-3.000),
              (123456789012345678901234567890.123456789), (-0.000000000000000000001)`,
    column: 'amount',
    space: { table: 'k', columns: ['amount'], types: ['numeric'] },
    premise: `SELECT count(DISTINCT amount::text) > count(DISTINCT amount) AND max(n) > 1
              FROM k, (SELECT count(*) AS n FROM k GROUP BY amount) g`,
  },
  {
    kind: 'composite (tenant_id int, id uuid)',
    setup: `CREATE TABLE k (tenant_id int NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(),
                            touched int NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id));
            INSERT INTO k (tenant_id) SELECT i % 7 - 3 FROM generate_series(1, 1500) i`,
    column: 'tenant_id,id',
    space: { table: 'k', columns: ['tenant_id', 'id'], types: ['int', 'uuid'] },
  },
];

/** A process of the fleet that is mid-job (in its job's sleep), once one is. */
async function midJob(pool: pg.Pool, fleet: readonly BbmProcess[]): Promise<BbmProcess> {
  try {
    return await waitFor(async () => {
      const { rows } = await pool.query<{ query: string }>(
        `SELECT query FROM pg_stat_activity
         WHERE query LIKE '%bbm-keys-sleep pid=%' AND state = 'active' AND datname = current_database() AND pid <> pg_backend_pid()`,
      );
      const pids = rows.map((r) => Number(/bbm-keys-sleep pid=(\d+)/.exec(r.query)?.[1]));
      return fleet.find((p) => pids.includes(p.child.pid!));
    }, 'a process of the fleet mid-job');
  } catch (error) {
    const { rows } = await pool.query(
      'SELECT status, failure_message, (SELECT count(*) FROM key_log) AS logged FROM batched_background_migrations',
    );
    // What the migration and the fleet were doing: a migration done before any kill, or processes that died.
    const outputs = fleet.map((p) => p.output()).join('\n---\n');
    throw new Error(`${String(error)}: ${JSON.stringify(rows)}\n${outputs}`, { cause: error });
  }
}

describe('keys under a fleet of killed and restarted processes', () => {
  const db = useTestDatabase();

  it.each(cases)(
    '$kind: every row once, ranges tiling the key, finished',
    async ({ setup, column, space, premise }) => {
      const { pool, url } = db();
      await pool.query(setup);
      if (premise) expect((await pool.query(`SELECT (${premise}) AS ok`)).rows[0], premise).toEqual({ ok: true });
      await createKeyLog(pool);
      await insertKeyMigration(pool, { name: 'keys', table: 'k', column, work: 'keys.touch', batchSize: 25, lanes: 2 });
      const env = { DATABASE_URL: url, BBM_TEST_JOB_SLEEP_MS: String(JOB_SLEEP_MS) };
      // The template database is migrated: --skip-migrate spares each start the schema check.
      const start = () => startBbm(['run', '--config', KEYS_CONFIG, '--concurrency', '2', '--skip-migrate'], env);
      const fleet = [start(), start(), start()];

      // Kill whichever process is mid-job, restart it, and again.
      const killed: number[] = [];
      for (let kill = 0; kill < KILLS; kill += 1) {
        const victim = await midJob(pool, fleet);
        victim.child.kill('SIGKILL');
        expect((await victim.exited).signal).toBe('SIGKILL');
        killed.push(victim.child.pid!);
        fleet[fleet.indexOf(victim)] = start();
      }
      await waitFor(
        async () =>
          (await pool.query(`SELECT status FROM batched_background_migrations WHERE name = 'keys'`)).rows[0].status ===
          MigrationStatus.finished,
        'the migration to finish',
      );
      // Each process up (it announces itself) before it is told to stop, so that it stops as a worker does.
      await waitFor(async () => {
        const { rows } = await pool.query('SELECT pid FROM batched_background_migration_workers');
        return fleet.every((p) => rows.some((r) => r.pid === p.child.pid));
      }, 'every process of the fleet to be up');
      for (const worker of fleet) worker.child.kill('SIGTERM');
      for (const worker of fleet) expect(await worker.exited, worker.output()).toEqual({ code: 0, signal: null });
      expect(killed).toHaveLength(KILLS);
      await expectTiled(pool, space, 'keys', { log: true, minRanges: 30 });
      // A range killed mid-job was never recorded: it was taken again and ran once.
      const { rows } = await pool.query(
        'SELECT array_agg(DISTINCT attempts) AS attempts FROM batched_background_migration_jobs',
      );
      expect(rows[0].attempts).toEqual([1]);
      // Both lanes ran (the processes killed had a job each in flight: the fleet shared the lanes).
      const { rows: lanes } = await pool.query('SELECT array_agg(DISTINCT lane ORDER BY lane) AS lanes FROM key_log');
      expect(lanes[0].lanes).toEqual([0, 1]);
    },
  );
});
