#!/usr/bin/env node
// The `bbm` command (package.json `bin`), compiled to dist/cli/bin.js: no TypeScript compiler at run time.
import { main } from './main.ts';

// Node ends a process whose event loop has nothing left to wait for, even while a promise is
// pending: a command waiting on something no socket or timer will ever settle would vanish with
// exit code 13 and no word. It says so instead, and fails.
let settled = false;
process.once('beforeExit', () => {
  if (settled) return;
  process.stderr.write('bbm: the command stopped without finishing (nothing was left to wait for); exiting\n');
  process.exit(1);
});
process.exitCode = await main(process.argv.slice(2));
settled = true;
