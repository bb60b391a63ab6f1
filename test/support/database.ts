/**
 * A database of its own for each test, cloned from the migrated template. Set
 * BBM_KEEP_TEST_DB=1 to keep it after the run for inspection (its name is logged).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, inject } from 'vitest';
import { startEmbeddedPostgres, type EmbeddedCluster } from '../../src/dev/embedded-postgres.ts';
import { migrateSchema } from '../../src/store/apply-schema.ts';
import { createPool } from '../../src/store/db.ts';

export interface TestDatabase {
  name: string;
  url: string;
  pool: pg.Pool;
  drop(): Promise<void>;
}

/** `empty`: a database without pg-bbm's schema (cloned from template0), for tests of migrating it. */
export async function createTestDatabase({ empty = false } = {}): Promise<TestDatabase> {
  const adminUrl = inject('adminUrl');
  const name = `bbm_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client(adminUrl);
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name} TEMPLATE ${empty ? 'template0' : inject('templateDatabase')}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const pool = createPool({ connectionString: url.toString(), max: 10 });
  return {
    name,
    url: url.toString(),
    pool,
    async drop() {
      await pool.end();
      if (process.env.BBM_KEEP_TEST_DB) {
        console.log(`kept test database ${name}`);
        return;
      }
      const client = new pg.Client(adminUrl);
      await client.connect();
      try {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await client.end();
      }
    },
  };
}

/** A fresh database for every test of the calling file: `const db = useTestDatabase(); … db().pool`. */
export function useTestDatabase(): () => TestDatabase {
  let current: TestDatabase | undefined;
  beforeEach(async () => {
    current = await createTestDatabase();
  });
  afterEach(async () => {
    await current?.drop();
    current = undefined;
  });
  return () => {
    if (!current) throw new Error('useTestDatabase: no database outside a test');
    return current;
  };
}

/**
 * A server of the test file's own, with pg-bbm's schema and a pool of `poolMax` connections,
 * started before its tests and stopped after them: for tests that crash the server or change its
 * configuration, which on the shared one would reach every other test file. Use inside a test.
 */
export function useOwnCluster({ poolMax }: { poolMax: number }): () => { cluster: EmbeddedCluster; pool: pg.Pool } {
  let own: { cluster: EmbeddedCluster; pool: pg.Pool } | undefined;
  beforeAll(async () => {
    const cluster = await startEmbeddedPostgres();
    const pool = createPool({ connectionString: cluster.connectionString(), max: poolMax });
    own = { cluster, pool };
    await migrateSchema(pool);
  });
  afterAll(async () => {
    await own?.pool.end();
    await own?.cluster.stop();
  });
  return () => {
    if (!own) throw new Error("the test file's own cluster is not started (use it inside a test)");
    return own;
  };
}
