/**
 * `npm run test:package`: the path of a new user, from `npm pack` to a drained migration.
 *
 * Packs pg-bbm, installs the tarball with `pg` into fresh `npm init -y` projects in a temporary
 * directory (one CommonJS with `bbm.config.ts`, one ES module with `bbm.config.mjs`), copies the
 * README's config, INSERT and library snippet into them verbatim (so the README cannot drift from
 * what works), and runs them against a real PostgreSQL (embedded unless DATABASE_URL is set):
 * `bbm migrate`, the INSERT, `bbm run --until-done`, `bbm status --json`, then checks the rows.
 * Also: `require('pg-bbm')` from CommonJS, the library snippet, a strict TypeScript consumer,
 * and Sentry's absence. Reports the install size and `bbm --help`'s start
 * time (measured, not asserted: machines here are shared). Exits 1 on the first failed check.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { startEmbeddedPostgres, type EmbeddedCluster } from '../src/dev/embedded-postgres.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const ROWS = 5_000;
/** The issue's budget for `npm install pg-bbm pg` in a fresh project. */
const MAX_INSTALL_MB = 45;
const run = promisify(execFile);
const say = (text: string) => process.stdout.write(`${text}\n`);

function check(condition: unknown, what: string): asserts condition {
  if (!condition) throw new Error(`package test failed: ${what}`);
  say(`  ok  ${what}`);
}

/** A command's exit code and output, never throwing. */
function sh(
  cwd: string,
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): { code: number; stdout: string; stderr: string } {
  const result = spawnSync(command, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', timeout: 180_000 });
  return { code: result.status ?? -1, stdout: result.stdout ?? '', stderr: result.stderr ?? '' };
}

function mustSucceed(result: { code: number; stdout: string; stderr: string }, what: string): string {
  if (result.code !== 0)
    throw new Error(`package test failed: ${what} exited ${result.code}\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** The README's fenced block of `language` whose text starts with `firstLine`. */
function readmeBlock(readme: string, language: string, firstLine: string): string {
  const fence = new RegExp('```' + language + '\\n([\\s\\S]*?)```', 'g');
  for (const match of readme.matchAll(fence)) {
    if (match[1]!.startsWith(firstLine)) return match[1]!;
  }
  throw new Error(
    `package test failed: README.md has no \`\`\`${language} block starting with ${JSON.stringify(firstLine)}`,
  );
}

async function directoryBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) total += await directoryBytes(full);
    else if (entry.isFile()) total += (await stat(full)).size;
  }
  return total;
}

interface Variant {
  name: string;
  type: 'commonjs' | 'module';
  config: string;
}

const VARIANTS: Variant[] = [
  { name: 'commonjs project, bbm.config.ts', type: 'commonjs', config: 'bbm.config.ts' },
  { name: 'ES-module project, bbm.config.mjs', type: 'module', config: 'bbm.config.mjs' },
];

async function main(): Promise<void> {
  const started = Date.now();
  const work = await mkdtemp(path.join(tmpdir(), 'pg-bbm-package-'));
  let cluster: EmbeddedCluster | undefined;
  try {
    const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
    const configText = readmeBlock(readme, 'ts', '// bbm.config.ts');
    const insertSql = readmeBlock(readme, 'sql', 'INSERT INTO batched_background_migrations');
    const workerSnippet = readmeBlock(readme, 'js', '// worker.mjs');

    say('packing pg-bbm…');
    const packed = mustSucceed(sh(ROOT, 'npm', ['pack', '--pack-destination', work, '--json']), 'npm pack');
    const tarball = path.join(work, (JSON.parse(packed) as Array<{ filename: string }>)[0]!.filename);
    say(`  ${path.basename(tarball)}: ${((await stat(tarball)).size / 1024).toFixed(0)} kB`);

    let serverUrl = process.env.DATABASE_URL;
    if (!serverUrl) {
      cluster = await startEmbeddedPostgres({ ephemeral: true });
      serverUrl = cluster.connectionString('postgres');
    }
    const measurements: string[] = [];
    for (const variant of VARIANTS) {
      say(`\n${variant.name}`);
      measurements.push(
        ...(await tryVariant(variant, { work, tarball, serverUrl, configText, insertSql, workerSnippet })),
      );
    }
    say(`\n${measurements.join('\n')}`);
    say(`package test passed in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    await cluster?.stop();
    await rm(work, { recursive: true, force: true });
  }
}

async function tryVariant(
  variant: Variant,
  {
    work,
    tarball,
    serverUrl,
    configText,
    insertSql,
    workerSnippet,
  }: { work: string; tarball: string; serverUrl: string; configText: string; insertSql: string; workerSnippet: string },
): Promise<string[]> {
  const dir = path.join(work, variant.type);
  await run('mkdir', ['-p', dir]);
  mustSucceed(sh(dir, 'npm', ['init', '-y']), 'npm init -y');
  if (variant.type === 'module') mustSucceed(sh(dir, 'npm', ['pkg', 'set', 'type=module']), 'npm pkg set type=module');
  const manifest = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8')) as { type?: string };
  check((manifest.type ?? 'commonjs') === variant.type, `the project is "type": "${variant.type}"`);

  mustSucceed(
    sh(dir, 'npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball, 'pg']),
    'npm install pg-bbm pg',
  );
  const installMb = (await directoryBytes(path.join(dir, 'node_modules'))) / 1e6;
  check(
    installMb <= MAX_INSTALL_MB,
    `node_modules after \`npm install pg-bbm pg\` is ${installMb.toFixed(1)} MB (budget ${MAX_INSTALL_MB} MB)`,
  );
  check(
    !(await exists(path.join(dir, 'node_modules', '@sentry', 'node'))),
    '@sentry/node is not installed (optional peer)',
  );
  check(
    !(await exists(path.join(dir, 'node_modules', '@aws-sdk'))),
    '@aws-sdk/client-s3 is not installed (optional peer)',
  );
  check(
    !(await exists(path.join(dir, 'node_modules', 'tsx'))),
    'tsx is not installed (the bin runs compiled JavaScript)',
  );

  await writeFile(path.join(dir, variant.config), configText);
  const database = `bbm_package_${variant.type}`;
  const admin = new pg.Client(serverUrl);
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${database}`);
  await admin.end();
  const url = new URL(serverUrl);
  url.pathname = `/${database}`;
  const env = { DATABASE_URL: url.toString(), BBM_LOG_LEVEL: 'warn' };
  const db = new pg.Client(url.toString());
  await db.connect();
  try {
    await db.query('CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, email_lower text)');
    await db.query(
      `INSERT INTO users (id, email) SELECT i * 3, 'User' || i || '@Example.COM' FROM generate_series(1, ${ROWS}) i`,
    );

    const bbm = path.join(dir, 'node_modules', '.bin', 'bbm');
    const version = mustSucceed(sh(dir, bbm, ['--version']), 'bbm --version').trim();
    check(/^pg-bbm \d+\.\d+\.\d+/.test(version), `bbm --version prints ${version}`);
    const helpMs = medianMs(() => mustSucceed(sh(dir, bbm, ['--help']), 'bbm --help'), 5);

    const migrated = mustSucceed(sh(dir, bbm, ['migrate'], env), 'bbm migrate');
    check(
      /^applied \d+ migration\(s\) of pg-bbm's schema: 0000_init/.test(migrated),
      `bbm migrate says what it applied (${migrated.trim().slice(0, 60)}…)`,
    );

    await db.query(insertSql);
    check(true, "the README's INSERT runs");

    const drained = sh(dir, bbm, ['run', '--until-done'], env);
    check(
      drained.code === 0,
      `bbm run --until-done (config ${variant.config} found by default) exits 0${drained.code === 0 ? '' : `: ${drained.stderr}`}`,
    );
    const [status] = JSON.parse(mustSucceed(sh(dir, bbm, ['status', '--json'], env), 'bbm status --json')) as Array<{
      name: string;
      status: string;
      progress: number;
    }>;
    check(
      status?.name === 'backfill_email_lower' && status.status === 'finished' && status.progress === 1,
      `bbm status --json: ${status?.name} ${status?.status}, progress ${status?.progress}`,
    );
    const wrong = await db.query(
      'SELECT count(*)::int AS n FROM users WHERE email_lower IS DISTINCT FROM lower(email)',
    );
    check(wrong.rows[0].n === 0, `all ${ROWS} rows backfilled by the README's work function`);

    const sentry = sh(dir, bbm, ['run', '--until-done'], { ...env, SENTRY_DSN: 'http://public@127.0.0.1:9/1' });
    check(
      sentry.code === 2 && /@sentry\/node is not installed: run `npm install @sentry\/node`/.test(sentry.stderr),
      'with SENTRY_DSN set and no @sentry/node, bbm says to install it and exits 2',
    );

    await writeFile(
      path.join(dir, 's3.mjs'),
      `import { S3BlobStore } from 'pg-bbm/gc';
await new S3BlobStore({ bucket: 'registry', endpoint: 'http://127.0.0.1:9' }).exists('blobs/x');
`,
    );
    const s3 = sh(dir, process.execPath, ['s3.mjs'], env);
    check(
      s3.code !== 0 && /S3BlobStore needs the AWS SDK: run `npm install @aws-sdk\/client-s3`/.test(s3.stderr),
      'an S3BlobStore without @aws-sdk/client-s3 says to install it',
    );

    if (variant.type === 'commonjs') {
      const required = mustSucceed(
        sh(dir, process.execPath, [
          '-e',
          "const b = require('pg-bbm'); const gc = require('pg-bbm/gc'); console.log(typeof b.enqueueMigration, typeof b.defineConfig, typeof gc.gcWork)",
        ]),
        "require('pg-bbm')",
      );
      check(
        required.trim() === 'function function function',
        "require('pg-bbm') and require('pg-bbm/gc') work from CommonJS",
      );

      // The library snippet, verbatim, on a second migration enqueued from CommonJS code.
      await writeFile(
        path.join(dir, 'enqueue.cjs'),
        `const { enqueueMigration } = require('pg-bbm');
const pg = require('pg');
(async () => {
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
  await db(pool);
  await pool.end();
})();
async function db(pool) {
  await pool.query('UPDATE users SET email_lower = NULL');
  const { id } = await enqueueMigration(pool, { name: 'again', work: 'users.backfill_email_lower', table: 'public.users', column: 'id', batchSize: 700 });
  console.log(String(id));
}
`,
      );
      mustSucceed(sh(dir, process.execPath, ['enqueue.cjs'], env), 'enqueueMigration from a CommonJS script');
      await writeFile(path.join(dir, 'worker.mjs'), workerSnippet);
      mustSucceed(sh(dir, process.execPath, ['worker.mjs'], env), "the README's worker.mjs");
      const again = await db.query(
        "SELECT m.status, (SELECT count(*)::int FROM users WHERE email_lower IS DISTINCT FROM lower(email)) AS wrong FROM batched_background_migrations m WHERE m.name = 'again'",
      );
      check(
        again.rows[0]?.status === 2 && again.rows[0]?.wrong === 0,
        "the README's library snippet drains a migration enqueued with enqueueMigration",
      );

      await typecheckConsumer(dir);
    } else {
      const sql = mustSucceed(
        sh(
          dir,
          bbm,
          [
            'enqueue',
            '--dry-run',
            '--name',
            'dry',
            '--work',
            'users.backfill_email_lower',
            '--table',
            'users',
            '--column',
            'id',
            '--batch-size',
            '100',
          ],
          { DATABASE_URL: '' },
        ),
        'bbm enqueue --dry-run',
      );
      await db.query(sql);
      check(
        (await db.query("SELECT 1 FROM batched_background_migrations WHERE name = 'dry'")).rowCount === 1,
        'bbm enqueue --dry-run prints an INSERT that runs',
      );
    }
    return [
      `${variant.name}: node_modules ${installMb.toFixed(1)} MB; \`bbm --help\` median ${helpMs.toFixed(0)} ms over 5 runs`,
    ];
  } finally {
    await db.end();
  }
}

/** A strict consumer project: pg-bbm's published .d.ts must type-check, and be clean even without skipLibCheck. */
async function typecheckConsumer(dir: string): Promise<void> {
  const typescript = `typescript@${JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')).devDependencies.typescript}`;
  mustSucceed(
    sh(dir, 'npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--no-save', typescript]),
    `npm install ${typescript}`,
  );
  await writeFile(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        noEmit: true,
        module: 'nodenext',
        moduleResolution: 'nodenext',
        target: 'es2022',
        skipLibCheck: true,
      },
      include: ['check.mts'],
    }),
  );
  await writeFile(
    path.join(dir, 'check.mts'),
    `import pg from 'pg';
import { createWorker, defineConfig, enqueueMigration, enqueueMigrationSql, type MigrationSpec, type Work } from 'pg-bbm';
import { gcWork } from 'pg-bbm/gc';

const pool = new pg.Pool();
const work: Work = { name: 'w', async do(job) { const r = await job.query('SELECT 1'); return r.rowCount ?? 0; } };
const spec: MigrationSpec = { name: 'n', work: 'w', table: 't', column: 'id', batchSize: 10 };
const id: bigint = (await enqueueMigration(pool, spec)).id;
const text: string = enqueueMigrationSql(spec);
const worker = createWorker({ ...defineConfig({ work: [work] }), pool });
void worker; void id; void text; void gcWork;
// @ts-expect-error: pool is a typed pg.Pool, not any (a batch size must be a number)
await enqueueMigration(pool, { ...spec, batchSize: '10' });
`,
  );
  const tsc = path.join(dir, 'node_modules', '.bin', 'tsc');
  const strict = sh(dir, tsc, ['-p', '.']);
  check(
    strict.code === 0,
    `a strict TypeScript consumer (skipLibCheck: true) type-checks against pg-bbm's .d.ts${strict.code === 0 ? '' : `:\n${strict.stdout}${strict.stderr}`}`,
  );
  // Without skipLibCheck, every .d.ts is checked: pg-bbm's must be clean. drizzle-orm's own
  // declarations are not (errors in its sqlite, mysql and pg-core files that the consumer never
  // imports), which is why the README says skipLibCheck is needed.
  const all = sh(dir, tsc, ['-p', '.', '--skipLibCheck', 'false']);
  const errors = `${all.stdout}${all.stderr}`.split('\n').filter((line) => /error TS\d+/.test(line));
  const ours = errors.filter((line) => !line.startsWith('node_modules/drizzle-orm/'));
  check(
    ours.length === 0,
    `without skipLibCheck, no error in pg-bbm's .d.ts or the consumer (${errors.length} in drizzle-orm's own)${ours.length === 0 ? '' : `:\n${ours.join('\n')}`}`,
  );
}

function medianMs(fn: () => void, times: number): number {
  const samples: number[] = [];
  for (let i = 0; i < times; i += 1) {
    const t0 = performance.now();
    fn();
    samples.push(performance.now() - t0);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(times / 2)]!;
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
