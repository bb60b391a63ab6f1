/**
 * `npm run bench:ab -- --ref <git ref>`: this checkout's engine against another release's, side by
 * side in one run. The ref is built in a temporary worktree (sharing this node_modules); each side
 * gets a database of its own on one server, migrated by its own code, with the same table; the
 * sides drain alternately, first one then the other, round by round, each pass on a freshly
 * vacuumed table, after unmeasured warm-up rounds (a freshly loaded table keeps getting faster over
 * its first rewrites). Printed: each side's median rows/s per setting and the median of the
 * per-round ratios (this checkout / ref). Compare ratios, not absolute numbers: the machine is shared.
 *
 * Settings: one lane and four with health holds off (the engine's own speed), and four with the
 * defaults (what a user gets: health holds on, so slow start begins in one lane).
 *
 * Flags: --ref (default the last tag, else HEAD~1), --rows (200000), --batch (1000), --rounds (6),
 * --warmup (2), --json.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { pino } from 'pino';
import { startEmbeddedPostgres, type EmbeddedCluster } from '../src/dev/embedded-postgres.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const quiet = pino({ level: 'silent' });

interface Engine {
  migrateSchema(pool: pg.Pool): Promise<unknown>;
  createWorker(params: Record<string, unknown>): {
    run(options: { untilDone: boolean }): Promise<void>;
    close(): Promise<void>;
  };
}

interface Side {
  label: string;
  engine: Engine;
  url: string;
  pool: pg.Pool;
}

interface Setting {
  name: string;
  lanes: number;
  health: false | undefined;
}

const SETTINGS: Setting[] = [
  { name: '1 lane, holds off', lanes: 1, health: false },
  { name: '4 lanes, holds off', lanes: 4, health: false },
  { name: '4 lanes, defaults', lanes: 4, health: undefined },
];

const { values: flags } = parseArgs({
  options: {
    ref: { type: 'string' },
    rows: { type: 'string', default: '200000' },
    batch: { type: 'string', default: '1000' },
    rounds: { type: 'string', default: '6' },
    warmup: { type: 'string', default: '2' },
    json: { type: 'boolean', default: false },
  },
});

function git(...args: string[]): string {
  return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8' }).trim();
}

function defaultRef(): string {
  try {
    return git('describe', '--tags', '--abbrev=0');
  } catch {
    return 'HEAD~1';
  }
}

/** The ref's engine, compiled in a worktree of its own; removed when the run ends. */
function buildRef(ref: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'bbm-ab-'));
  git('worktree', 'add', '--detach', dir, ref);
  const remove = () => {
    try {
      git('worktree', 'remove', '--force', dir);
    } catch {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  try {
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
    execFileSync(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
      cwd: dir,
      stdio: 'inherit',
    });
  } catch (error) {
    remove();
    throw error;
  }
  return { dir, remove };
}

async function loadEngine(dir: string): Promise<Engine> {
  const entry = path.join(dir, 'dist/index.js');
  if (!existsSync(entry)) throw new Error(`no ${entry}: the build failed`);
  return (await import(pathToFileURL(entry).href)) as Engine;
}

async function createSide(label: string, engine: Engine, adminUrl: string, rows: number): Promise<Side> {
  const database = `bbm_ab_${label.replace(/\W/g, '_')}`;
  const admin = new pg.Client(adminUrl);
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${database}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${database}`;
  const pool = new pg.Pool({ connectionString: url.toString(), max: 2 });
  // A connection the server ends (its shutdown at the end) must not end the run unheard.
  pool.on('error', () => {});
  await engine.migrateSchema(pool);
  await pool.query('CREATE TABLE ab_items (id bigint PRIMARY KEY, v int NOT NULL, w int NOT NULL DEFAULT 0)');
  await pool.query('INSERT INTO ab_items (id, v) SELECT x, x FROM generate_series(1, $1) AS x', [rows]);
  await pool.query('ALTER TABLE ab_items SET (autovacuum_enabled = false)');
  return { label, engine, url: url.toString(), pool };
}

const touch = {
  name: 'ab.touch',
  async do(job: { query: (text: string, values: unknown[]) => Promise<unknown>; start: bigint; end: bigint }) {
    await job.query('UPDATE ab_items SET w = w + 1 WHERE id BETWEEN $1 AND $2', [job.start, job.end]);
  },
};

let passes = 0;

/** One drain of a fresh migration over the whole table; rows/s. */
async function drain(side: Side, setting: Setting, rows: number, batch: number): Promise<number> {
  passes += 1;
  await side.pool.query('VACUUM ab_items');
  await side.pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
     VALUES ($1, $2, 'ab.touch', 'ab_items', 'id', $3)`,
    [`ab_${passes}`, batch, setting.lanes],
  );
  const worker = side.engine.createWorker({
    work: [touch],
    connectionString: side.url,
    logger: quiet,
    startupJitterMs: 0,
    concurrency: setting.lanes,
    ...(setting.health === false && { health: false, intervalMs: 1 }),
  });
  const started = performance.now();
  await worker.run({ untilDone: true });
  const ms = performance.now() - started;
  await worker.close();
  return rows / (ms / 1000);
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

async function main() {
  const ref = flags.ref ?? defaultRef();
  const rows = Number(flags.rows);
  const batch = Number(flags.batch);
  const rounds = Number(flags.rounds);
  const warmup = Number(flags.warmup);
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: 'inherit' });
  const built = buildRef(ref);
  let cluster: EmbeddedCluster | undefined;
  const sides: Side[] = [];
  try {
    let adminUrl = process.env.DATABASE_URL;
    if (!adminUrl) {
      cluster = await startEmbeddedPostgres({ ephemeral: true });
      adminUrl = cluster.connectionString('postgres');
    }
    sides.push(await createSide('ref', await loadEngine(built.dir), adminUrl, rows));
    sides.push(await createSide('here', await loadEngine(ROOT), adminUrl, rows));
    const results = SETTINGS.map((setting) => ({
      setting: setting.name,
      ref: [] as number[],
      here: [] as number[],
      ratios: [] as number[],
    }));
    for (let round = 0; round < warmup + rounds; round += 1) {
      for (const [index, setting] of SETTINGS.entries()) {
        // Alternate which side goes first, so neither always meets the other's leftovers.
        const order = round % 2 === 0 ? sides : [...sides].reverse();
        const speeds: Record<string, number> = {};
        for (const side of order) speeds[side.label] = await drain(side, setting, rows, batch);
        if (round < warmup) continue;
        const result = results[index]!;
        result.ref.push(speeds.ref!);
        result.here.push(speeds.here!);
        result.ratios.push(speeds.here! / speeds.ref!);
      }
      if (!flags.json) console.error(`round ${round + 1}/${warmup + rounds}${round < warmup ? ' (warm-up)' : ''}`);
    }
    const summary = results.map((r) => ({
      setting: r.setting,
      refRowsPerSec: Math.round(median(r.ref)),
      hereRowsPerSec: Math.round(median(r.here)),
      ratio: Math.round(median(r.ratios) * 1000) / 1000,
      ratios: r.ratios.map((x) => Math.round(x * 1000) / 1000),
    }));
    if (flags.json) {
      console.log(JSON.stringify({ ref, rows, batch, rounds, summary }, null, 2));
    } else {
      console.log(`\nthis checkout against ${ref}: ${rows} rows, batch ${batch}, ${rounds} rounds (medians)`);
      for (const s of summary) {
        console.log(
          `  ${s.setting.padEnd(20)} ref ${String(s.refRowsPerSec).padStart(8)} rows/s  here ${String(s.hereRowsPerSec).padStart(8)} rows/s  here/ref ${s.ratio.toFixed(3)}  (rounds ${s.ratios.join(', ')})`,
        );
      }
    }
  } finally {
    for (const side of sides) await side.pool.end();
    await cluster?.stop();
    built.remove();
  }
}

await main();
