/**
 * `npm run lint`, the gate CI runs. ESLint (type-aware, about 34 s here: most of the time) runs
 * beside the other checks, which run one after another, so the gate takes about as long as ESLint
 * alone instead of ESLint and the rest (46 s in a row on the 2-core development machine). Each
 * check's output is printed whole when it ends, so the two chains never interleave; a check that
 * fails ends its chain and fails the gate. Run through npm (`npm run lint`), which puts
 * node_modules/.bin on the PATH; plain Node, so that the runner costs no start-up of its own.
 */
import { spawn } from 'node:child_process';
import process from 'node:process';

/** Each chain runs its checks in order and stops at the first that fails; the chains run at once. */
const CHAINS = [
  [['eslint', '.']],
  [
    // A file whose content Prettier found formatted before is not formatted again (the cache, in
    // node_modules/.cache, keys each file by its content and Prettier's version and options).
    ['prettier', '--check', '--cache', '--cache-strategy', 'content', '.'],
    ['madge', '--circular', '--extensions', 'ts', 'src', 'test', 'bench', 'scripts', 'examples'],
    ['tsx', 'scripts/check-schema-drift.ts'],
    ['tsx', 'scripts/check-function-files.ts'],
    ['tsx', 'scripts/check-ops.ts'],
    ['tsx', 'scripts/check-docs-links.ts'],
  ],
];

/** Runs a check (a bin of node_modules/.bin, as npm scripts find it), resolving with its exit code and output. */
function check([bin, ...args]) {
  return new Promise((resolve) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    child.on('error', (error) => resolve({ code: 1, output: `${output}${bin}: ${error.message}\n` }));
    child.on('close', (code, signal) =>
      resolve({ code: code ?? 1, output: signal ? `${output}${bin}: ${signal}\n` : output }),
    );
  });
}

async function runChain(chain) {
  for (const command of chain) {
    const { code, output } = await check(command);
    process.stdout.write(`> ${command.join(' ')}\n${output}`);
    if (code !== 0) return false;
  }
  return true;
}

const passed = await Promise.all(CHAINS.map(runChain));
if (passed.includes(false)) process.exitCode = 1;
