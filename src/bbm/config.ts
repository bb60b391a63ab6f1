/**
 * Config modules and worker options: validated once, here; the engine only sees `ResolvedOptions`.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createJiti } from 'jiti';
import { MAX_LANES } from '../store/codes.ts';
import { ConfigError } from './errors.ts';
import type { Config, WorkerOptions } from './types.ts';

/** Types a config module's default export. Returns its argument unchanged. */
export function defineConfig(config: Config): Config {
  return config;
}

export const DEFAULTS = {
  intervalMs: 10_000,
  maxIntervalMs: 300_000,
  jitterRatio: 0.2,
  pauseMs: 0,
  maxAttempts: 5,
  runTimeoutMs: 180_000,
  throttleCheckMs: 5_000,
  scheduleCheckMs: 10_000,
  concurrency: 1,
  runErrorHoldMs: 30_000,
  maxRunErrors: 5,
  passRetentionMs: 7 * 86_400_000,
} as const;

export type ResolvedOptions = Required<WorkerOptions>;

function integer(options: WorkerOptions, key: keyof WorkerOptions, fallback: number, min: number, max: number): number {
  const value = options[key] ?? fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${key} must be an integer from ${min} to ${max}, got ${JSON.stringify(options[key])}`);
  }
  return value;
}

export function resolveOptions(options: WorkerOptions = {}): ResolvedOptions {
  const day = 86_400_000;
  const intervalMs = integer(options, 'intervalMs', DEFAULTS.intervalMs, 1, day);
  const maxIntervalMs = integer(
    options,
    'maxIntervalMs',
    Math.max(DEFAULTS.maxIntervalMs, intervalMs),
    intervalMs,
    day,
  );
  const jitterRatio = options.jitterRatio ?? DEFAULTS.jitterRatio;
  if (typeof jitterRatio !== 'number' || !(jitterRatio >= 0 && jitterRatio < 1)) {
    throw new ConfigError(`jitterRatio must be a number in [0, 1), got ${JSON.stringify(options.jitterRatio)}`);
  }
  return {
    intervalMs,
    maxIntervalMs,
    jitterRatio,
    startupJitterMs: integer(options, 'startupJitterMs', intervalMs, 0, day),
    pauseMs: integer(options, 'pauseMs', DEFAULTS.pauseMs, 0, day),
    maxAttempts: integer(options, 'maxAttempts', DEFAULTS.maxAttempts, 1, 32_767),
    runTimeoutMs: integer(options, 'runTimeoutMs', DEFAULTS.runTimeoutMs, 100, day),
    throttleCheckMs: integer(options, 'throttleCheckMs', DEFAULTS.throttleCheckMs, 0, day),
    scheduleCheckMs: integer(options, 'scheduleCheckMs', DEFAULTS.scheduleCheckMs, 0, day),
    concurrency: integer(options, 'concurrency', DEFAULTS.concurrency, 1, MAX_LANES),
    runErrorHoldMs: integer(options, 'runErrorHoldMs', DEFAULTS.runErrorHoldMs, 1, day),
    maxRunErrors: integer(options, 'maxRunErrors', DEFAULTS.maxRunErrors, 1, 1_000),
    passRetentionMs: integer(options, 'passRetentionMs', DEFAULTS.passRetentionMs, 0, 3650 * day),
  };
}

/** Where `bbm` looks for a config module when `--config` is not given, in this order. */
const DEFAULT_CONFIG_FILES = [
  'bbm.config.ts',
  'bbm.config.mts',
  'bbm.config.cts',
  'bbm.config.mjs',
  'bbm.config.cjs',
  'bbm.config.js',
];

export function findDefaultConfig(cwd = process.cwd()): string | undefined {
  return DEFAULT_CONFIG_FILES.map((file) => path.join(cwd, file)).find((file) => existsSync(file));
}

/**
 * Loads a config module and checks its shape. jiti (the loader ESLint, Tailwind and Nuxt use for
 * their configs) compiles TypeScript on the fly and bridges ES modules and CommonJS, so `.ts`,
 * `.mts`, `.cts`, `.mjs`, `.cjs` and `.js` configs load alike in `"type": "module"` and
 * `"type": "commonjs"` projects, with no loader flag and no build step.
 */
export async function loadConfig(file: string): Promise<Config> {
  const absolute = path.resolve(file);
  if (!existsSync(absolute)) throw new ConfigError(`config file ${file} does not exist`);
  let config: unknown;
  try {
    // No disk cache: a config is loaded once per process; a cache would write into the project's node_modules.
    const jiti = createJiti(import.meta.url, { fsCache: false });
    config = await jiti.import(absolute, { default: true });
  } catch (cause) {
    throw new ConfigError(`config file ${file} failed to load: ${(cause as Error).message}`, { cause });
  }
  if (!config || typeof config !== 'object') {
    throw new ConfigError(`config file ${file} must default-export defineConfig({ work: [...] }) or a plain object`);
  }
  if (!Array.isArray((config as Config).work)) throw new ConfigError(`config file ${file}: \`work\` must be an array`);
  return config as Config;
}
