#!/usr/bin/env node
// The `bbm` command. pg-bbm ships TypeScript; tsx loads it (and `.ts` config modules) on the fly.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
