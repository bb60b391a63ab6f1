/**
 * `npm run lint` runs this: fails when a schema in TypeScript (src/store/schema.ts, the GC pack's
 * src/store/gc/schema.ts) and its SQL migrations disagree, so a schema change cannot land without
 * its migration. drizzle-kit itself decides: it generates into a copy of the migrations folder,
 * and any file it writes there is a migration that is missing from the repository.
 */
import { execFileSync } from 'node:child_process';
import { cp, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SETS = [
  { schema: 'src/store/schema.ts', out: 'migrations' },
  { schema: 'src/store/gc/schema.ts', out: 'migrations/gc' },
];

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => path.relative(dir, path.join(e.parentPath, e.name)));
}

let drifted = false;
for (const { schema, out } of SETS) {
  const copy = await mkdtemp(path.join(tmpdir(), 'pg-bbm-drift-'));
  try {
    await cp(path.join(ROOT, out), copy, { recursive: true });
    // Nested sets (migrations/gc) are not part of their parent's journal.
    for (const other of SETS) {
      if (other.out !== out && other.out.startsWith(`${out}/`)) {
        await rm(path.join(copy, path.relative(out, other.out)), { recursive: true, force: true });
      }
    }
    const before = new Set(await filesUnder(copy));
    // drizzle-kit prefixes `out` with './': give it a path relative to the working directory.
    execFileSync(
      'npx',
      ['drizzle-kit', 'generate', '--dialect', 'postgresql', '--schema', schema, '--out', path.relative(ROOT, copy)],
      { cwd: ROOT, stdio: 'pipe' },
    );
    const added = (await filesUnder(copy)).filter((file) => !before.has(file) && file.endsWith('.sql'));
    if (added.length === 0) {
      process.stdout.write(`${schema}: its migrations in ${out}/ are up to date\n`);
      continue;
    }
    drifted = true;
    process.stderr.write(`${schema} and ${out}/ disagree: run \`npm run db:generate\` (drizzle-kit would add:)\n`);
    for (const file of added) process.stderr.write(`--- ${file}\n${await readFile(path.join(copy, file), 'utf8')}\n`);
  } finally {
    await rm(copy, { recursive: true, force: true });
  }
}
process.exitCode = drifted ? 1 : 0;
