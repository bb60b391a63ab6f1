/**
 * Config modules and worker options: validated once, here; the engine only sees `ResolvedOptions`.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createJiti } from 'jiti';
import { MAX_LANES } from '../store/codes.ts';
import { ConfigError } from './errors.ts';
import type { Config, NotifyEvent, NotifyTarget, WorkerOptions } from './types.ts';

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
  notifyCheckMs: 5_000,
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
    notifyCheckMs: integer(options, 'notifyCheckMs', DEFAULTS.notifyCheckMs, 10, day),
  };
}

export const NOTIFY_EVENTS: readonly NotifyEvent[] = [
  'started',
  'finished',
  'failed',
  'held',
  'not_finalized',
  'awaiting_approval',
];

const NOTIFY_KEYS = new Set(['url', 'events', 'format', 'timeoutMs', 'maxAttempts', 'heldForMs', 'unfinalizedForMs']);

export interface ResolvedNotifyTarget {
  url: string;
  /** What notification rows name it by: a hash of its format and URL (the URL may hold a secret). */
  id: string;
  /** The URL's host, for log lines (never the whole URL). */
  host: string;
  events: readonly NotifyEvent[];
  format: 'json' | 'slack';
  timeoutMs: number;
  maxAttempts: number;
  heldForMs: number;
  unfinalizedForMs: number;
}

/**
 * `notify` as the notifier uses it. Error messages name a target by its index, never its URL.
 */
export function resolveNotify(notify: unknown): ResolvedNotifyTarget[] {
  if (notify === undefined) return [];
  if (!Array.isArray(notify)) throw new ConfigError('notify must be an array of { url, events, format }');
  const day = 86_400_000;
  const resolved = notify.map((entry: unknown, index): ResolvedNotifyTarget => {
    const at = `notify[${index}]`;
    if (!entry || typeof entry !== 'object') throw new ConfigError(`${at} must be an object { url, events, format }`);
    const target = entry as NotifyTarget;
    for (const key of Object.keys(target)) {
      if (!NOTIFY_KEYS.has(key)) throw new ConfigError(`${at}: unknown option ${JSON.stringify(key)}`);
    }
    let url: URL;
    try {
      url = new URL(String(target.url));
    } catch {
      throw new ConfigError(`${at}.url must be an http or https URL`);
    }
    if ((url.protocol !== 'http:' && url.protocol !== 'https:') || typeof target.url !== 'string') {
      throw new ConfigError(`${at}.url must be an http or https URL`);
    }
    const events: readonly unknown[] = target.events ?? NOTIFY_EVENTS;
    if (!Array.isArray(events) || events.length === 0) {
      throw new ConfigError(`${at}.events must be a non-empty array of ${NOTIFY_EVENTS.join(', ')}`);
    }
    for (const event of events) {
      if (!NOTIFY_EVENTS.includes(event as NotifyEvent)) {
        throw new ConfigError(
          `${at}.events: unknown event ${JSON.stringify(event)}; known: ${NOTIFY_EVENTS.join(', ')}`,
        );
      }
    }
    const format = target.format ?? 'json';
    if (format !== 'json' && format !== 'slack') {
      throw new ConfigError(`${at}.format must be "json" or "slack", got ${JSON.stringify(target.format)}`);
    }
    const bounded = (
      key: 'timeoutMs' | 'maxAttempts' | 'heldForMs' | 'unfinalizedForMs',
      fallback: number,
      min: number,
      max: number,
    ) => {
      const value = target[key] ?? fallback;
      if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
        throw new ConfigError(
          `${at}.${key} must be an integer from ${min} to ${max}, got ${JSON.stringify(target[key])}`,
        );
      }
      return value;
    };
    return {
      url: target.url,
      id: createHash('sha256').update(`${format} ${target.url}`).digest('hex').slice(0, 16),
      host: url.host,
      events: [...new Set(events as readonly NotifyEvent[])],
      format,
      timeoutMs: bounded('timeoutMs', 10_000, 100, 120_000),
      maxAttempts: bounded('maxAttempts', 10, 1, 100),
      heldForMs: bounded('heldForMs', 3_600_000, 0, 365 * day),
      unfinalizedForMs: bounded('unfinalizedForMs', 7 * day, 0, 3650 * day),
    };
  });
  const ids = new Set<string>();
  for (const [index, target] of resolved.entries()) {
    if (ids.has(target.id)) throw new ConfigError(`notify[${index}] repeats an earlier webhook (same url and format)`);
    ids.add(target.id);
  }
  return resolved;
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
