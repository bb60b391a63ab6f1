#!/usr/bin/env node
// The `bbm` command (package.json `bin`), compiled to dist/cli/bin.js: no TypeScript compiler at run time.
import { main } from './main.ts';

process.exitCode = await main(process.argv.slice(2));
