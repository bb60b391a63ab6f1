/**
 * The catalog lookup tells "no such table" from every other error: only the former is
 * invalid_table, which fails a migration for good; anything else is thrown, for the run to retry.
 */
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { isNotATableName, resolveTarget } from '../src/store/catalog.ts';
import type { Queryable } from '../src/store/db.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, range } from './support/engine.ts';

/** Runs `fn` in a transaction on a connection of its own, rolled back after. */
async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    return await fn(client);
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
}

/**
 * A connection as a pooler in transaction mode can hand one over (PgBouncer before 1.21): the
 * server connection it lands on already has a prepared statement of the name the lookup's
 * statement is sent under. The server raises the 42P05 itself.
 */
function clashingPreparedStatement(client: pg.PoolClient): Queryable {
  const query = async (textOrConfig: string | pg.QueryConfig, values?: unknown[]) => {
    if (typeof textOrConfig === 'object' && textOrConfig.text.includes('to_regclass')) {
      await client.query('PREPARE bbm_taken AS SELECT 1');
      return client.query({ ...textOrConfig, name: 'bbm_taken' });
    }
    return client.query(textOrConfig as string, values);
  };
  return { query } as Queryable;
}

describe('what the catalog lookup reads as no such table', () => {
  it.each([
    ['42P05', false], // duplicate_prepared_statement: a pooled server connection's leftovers
    ['42501', false], // insufficient_privilege
    ['42P07', false], // duplicate_table
    ['42703', false], // undefined_column
    ['42883', false], // undefined_function
    ['08006', false], // connection_failure
    ['57014', false], // query_canceled
    ['25P02', false], // in_failed_sql_transaction
    ['42P01', true], // undefined_table
    ['42601', true], // to_regclass: too many dotted names
    ['42602', true], // to_regclass before PostgreSQL 16: invalid name syntax
    ['0A000', true], // to_regclass: cross-database reference
    ['22023', true],
    ['3F000', true], // invalid_schema_name
  ])('an error of SQLSTATE %s says the name names no table: %s', (code, notATable) => {
    expect(isNotATableName(Object.assign(new Error('x'), { code }))).toBe(notATable);
  });
});

describe('the catalog lookup', () => {
  const db = useTestDatabase();

  it('a name to_regclass refuses is invalid_table', async () => {
    const { pool } = db();
    for (const name of ['a.b.c.d', 'elsewhere.public.items', 'no_such_table', 'public.no_such_table']) {
      const found = await inTransaction(pool, (client) => resolveTarget(client, name, 'id'));
      expect(found, name).toMatchObject({ code: 'invalid_table' });
    }
  });

  it('a prepared statement of the same name on the server connection (42P05) is thrown, not invalid_table', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 10));
    await inTransaction(pool, async (client) => {
      await expect(resolveTarget(clashingPreparedStatement(client), 'items', 'id')).rejects.toMatchObject({
        code: '42P05',
      });
      // The transaction is still usable: the lookup ran in a savepoint.
      expect(await resolveTarget(client, 'items', 'id')).toMatchObject({ table: 'items', column: 'id' });
    });
  });

  it('a role that may not call to_regclass (42501) gets the error thrown, not invalid_table', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 10));
    const role = `bbm_catalog_${randomBytes(4).toString('hex')}`;
    await pool.query(`CREATE ROLE ${role} NOLOGIN`);
    try {
      await pool.query(`GRANT SELECT ON items TO ${role}`);
      await pool.query(`REVOKE EXECUTE ON FUNCTION pg_catalog.to_regclass(text) FROM PUBLIC`);
      await inTransaction(pool, async (client) => {
        await client.query(`SET LOCAL ROLE ${role}`);
        await expect(resolveTarget(client, 'items', 'id')).rejects.toMatchObject({
          code: '42501',
          message: expect.stringContaining('permission denied for function to_regclass'),
        });
      });
    } finally {
      await pool.query(`GRANT EXECUTE ON FUNCTION pg_catalog.to_regclass(text) TO PUBLIC`);
      await pool.query(`DROP OWNED BY ${role}`);
      await pool.query(`DROP ROLE ${role}`);
    }
  });
});
