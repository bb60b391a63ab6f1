/**
 * `npm run lint` runs this: the database functions live in sql/functions/, one file per function
 * (src/store/functions.ts installs them), and nowhere else. Fails when
 *   - a migration after the history (0000-0017) creates or alters a bbm_ function;
 *   - a bbm_ function called from src/store, bench/ or test/support/ has no file;
 *   - a file does not define the function it is named for, or defines another (compat.sql: shims
 *     of functions that have files, each headed by the release that may drop it);
 *   - a definition is a plain CREATE (an existing database has every function: CREATE OR REPLACE);
 *   - a file has a token that codes.ts and locks.ts do not fill.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { COMPAT_FILE, FUNCTIONS_FOLDER, readFunctionSet } from '../src/store/functions.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The last migration that may define functions: the history databases carry. */
const LAST_WITH_FUNCTIONS = '0017_cut_counts_held_ranges';
const CALLERS = ['src/store', 'bench', 'test/support'];

const problems: string[] = [];
const withoutComments = (sql: string) => sql.replace(/--.*$/gm, '');

// Migrations: table DDL only after the history.
const journal = JSON.parse(await readFile(path.join(ROOT, 'migrations/meta/_journal.json'), 'utf8')) as {
  entries: Array<{ tag: string }>;
};
const historyEnd = journal.entries.findIndex((entry) => entry.tag === LAST_WITH_FUNCTIONS);
if (historyEnd < 0) problems.push(`migrations/meta/_journal.json has no ${LAST_WITH_FUNCTIONS}`);
const gcMigrations = (await readdir(path.join(ROOT, 'migrations/gc'))).filter((name) => name.endsWith('.sql'));
const laterMigrations = [
  ...journal.entries.slice(historyEnd + 1).map((entry) => `migrations/${entry.tag}.sql`),
  ...gcMigrations.map((name) => `migrations/gc/${name}`),
];
const DEFINES_BBM =
  /\b(?:CREATE\s+(?:OR\s+REPLACE\s+)?|ALTER\s+)(?:FUNCTION|PROCEDURE)\s+(?:"?public"?\.)?"?(bbm_\w+)/gi;
for (const file of laterMigrations) {
  const sql = withoutComments(await readFile(path.join(ROOT, file), 'utf8'));
  for (const [, name] of sql.matchAll(DEFINES_BBM)) {
    problems.push(`${file} defines ${name}: a function goes in sql/functions/${name}.sql, not in a migration`);
  }
}

// Function files: each defines its own function, with CREATE OR REPLACE.
const DEFINITION = /\bCREATE\s+(OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+(?:"?public"?\.)?"?(\w+)/gi;
const files = (await readdir(FUNCTIONS_FOLDER)).filter((name) => name.endsWith('.sql'));
const own = new Set(files.filter((name) => name !== COMPAT_FILE).map((name) => name.replace(/\.sql$/, '')));
for (const file of files) {
  const text = await readFile(path.join(FUNCTIONS_FOLDER, file), 'utf8');
  const definitions = [...withoutComments(text).matchAll(DEFINITION)];
  if (definitions.length === 0) problems.push(`sql/functions/${file} defines no function`);
  for (const [statement, orReplace, name] of definitions) {
    if (!orReplace) problems.push(`sql/functions/${file}: ${statement} needs OR REPLACE (databases have it already)`);
    if (file === COMPAT_FILE) {
      if (!own.has(name!)) problems.push(`sql/functions/${file}: ${name} is a shim of a function without a file`);
    } else if (name !== file.replace(/\.sql$/, '')) {
      problems.push(`sql/functions/${file} defines ${name}: one function per file, named for it`);
    }
  }
  if (file === COMPAT_FILE) {
    // The comment lines right above each definition name the release that may drop it.
    const lines = text.split('\n');
    lines.forEach((line, i) => {
      if (!/^CREATE\b/.test(line)) return;
      let head = i - 1;
      while (head >= 0 && lines[head]!.startsWith('--') && !/May be dropped in \d+\.\d+\.\d+/.test(lines[head]!))
        head -= 1;
      if (head < 0 || !lines[head]!.startsWith('--')) {
        problems.push(`sql/functions/${file}: "${line}" is not headed by "May be dropped in x.y.z"`);
      }
    });
  }
}
try {
  readFunctionSet();
} catch (error) {
  problems.push((error as Error).message);
}

// Callers: every bbm_ function called has a file.
async function tsFiles(dir: string): Promise<string[]> {
  const entries = await readdir(path.join(ROOT, dir), { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => path.relative(ROOT, path.join(e.parentPath, e.name)));
}
for (const file of (await Promise.all(CALLERS.map(tsFiles))).flat()) {
  const text = await readFile(path.join(ROOT, file), 'utf8');
  for (const [, name] of text.matchAll(/\b(bbm_\w+)[ \t]*\(/g)) {
    if (!own.has(name!)) problems.push(`${file} calls ${name}, which has no file sql/functions/${name}.sql`);
  }
}

if (problems.length > 0) {
  process.stderr.write(`${[...new Set(problems)].join('\n')}\n`);
  process.exitCode = 1;
} else {
  process.stdout.write(
    `sql/functions/: ${own.size} functions, each in its file; migrations after ${LAST_WITH_FUNCTIONS} define none\n`,
  );
}
