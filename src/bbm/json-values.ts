/**
 * Values a migration stores as JSON (its arguments, its key bounds), checked before they are
 * written: JSON.stringify changes or drops much of what JavaScript can hold (undefined, functions,
 * a Date, a Map, NaN, sparse array slots) without a word, and the work function would then read
 * something else than what was enqueued. Such values are refused, each named by its path.
 */
import { ConfigError } from './errors.ts';

/** NUL, and UTF-16 surrogates without their other half: jsonb refuses `\u0000`, and a lone surrogate is no text at all. */
const UNSTORABLE_TEXT = /\0|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** What is wrong with a string as stored JSON text, if anything. */
function textProblem(text: string, path: string): string | undefined {
  return UNSTORABLE_TEXT.test(text)
    ? `${path} holds a NUL character or a lone UTF-16 surrogate, which PostgreSQL's jsonb cannot store`
    : undefined;
}

/**
 * What is wrong with a number as JSON, if anything. An integer past ±(2^53 - 1) is refused: JSON
 * writes the shortest digits that read back as the same double (2 ** 60 as 1152921504606847000),
 * so the database stores another integer than the one meant, as it does when JSON text with such
 * an integer was parsed into a number.
 */
function numberProblem(value: number, path: string): string | undefined {
  if (!Number.isFinite(value)) return `${path} is ${value}, which JSON has no form for (JSON.stringify writes null)`;
  if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
    return `${path} is ${value}, an integer past 2^53 that JSON does not keep exact; give it as a string`;
  }
  return undefined;
}

/** The name of what an object is, for a message: `a Date`, `a Map`, `an instance of Money`. */
function kindOf(value: object): string {
  const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
  if (typeof name !== 'string' || name === '') return 'an object with a prototype';
  return /^[AEIOU]/.test(name) ? `an ${name}` : `a ${name}`;
}

function isPlainObject(value: object): boolean {
  const prototype: unknown = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/** `args.a`, `args["b c"]`, `args.list[2]`. */
function childPath(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return /^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

/**
 * What is wrong with `value` as JSON, if anything: undefined when JSON.stringify writes exactly it
 * (plain objects and arrays, strings jsonb can store, finite numbers, booleans, null); otherwise
 * why not, with the path of the first bad part. `seen`: the objects on the path, for cycles.
 */
export function jsonProblem(value: unknown, path: string, seen: Set<object> = new Set()): string | undefined {
  switch (typeof value) {
    case 'string':
      return textProblem(value, path);
    case 'number':
      return numberProblem(value, path);
    case 'boolean':
      return undefined;
    case 'bigint':
      return `${path} is a bigint (${value}n), which JSON has no form for; give it as a string or a number`;
    case 'undefined':
      return `${path} is undefined, which JSON leaves out (or writes as null in an array); leave the key out or give null`;
    case 'function':
    case 'symbol':
      return `${path} is a ${typeof value}, which JSON leaves out`;
  }
  if (value === null) return undefined;
  const object = value as object;
  if (seen.has(object)) return `${path} refers back to an object that holds it (a cycle), which JSON cannot write`;
  seen.add(object);
  const problem = Array.isArray(object) ? arrayProblem(object, path, seen) : objectProblem(object, path, seen);
  seen.delete(object);
  return problem;
}

function arrayProblem(array: readonly unknown[], path: string, seen: Set<object>): string | undefined {
  if (Object.getPrototypeOf(array) !== Array.prototype) return `${path} is ${kindOf(array)}, not a plain array`;
  for (let i = 0; i < array.length; i += 1) {
    if (!(i in array)) return `${childPath(path, i)} is an empty slot of a sparse array, which JSON writes as null`;
    const problem = jsonProblem(array[i], childPath(path, i), seen);
    if (problem) return problem;
  }
  const extra = Reflect.ownKeys(array).find(
    (key) => key !== 'length' && !(typeof key === 'string' && /^\d+$/.test(key)),
  );
  return extra === undefined
    ? undefined
    : `${path} has a property ${String(extra)} besides its elements, which JSON leaves out`;
}

function objectProblem(object: object, path: string, seen: Set<object>): string | undefined {
  if (!isPlainObject(object)) {
    const hint = object instanceof Date ? ' (give date.toISOString())' : '';
    return `${path} is ${kindOf(object)}, which JSON.stringify does not write as it is${hint}; give a plain object, array or value`;
  }
  const symbol = Object.getOwnPropertySymbols(object)[0];
  if (symbol !== undefined) return `${path} has a symbol key ${String(symbol)}, which JSON leaves out`;
  for (const [key, child] of Object.entries(object)) {
    const problem =
      textProblem(key, `${childPath(path, key)} (its key)`) ?? jsonProblem(child, childPath(path, key), seen);
    if (problem) return problem;
  }
  return undefined;
}

/**
 * A migration's arguments (`job_arguments`) as JSON text: a plain object whose every part JSON
 * writes exactly, or undefined for none (the column's default, `{}`). Throws ConfigError.
 */
export function argumentsJson(args: unknown): string | undefined {
  if (args === undefined) return undefined;
  if (args === null || typeof args !== 'object' || Array.isArray(args)) {
    throw new ConfigError(`args must be a plain JSON object, got ${describe(args)}`);
  }
  const problem = jsonProblem(args, 'args');
  if (problem) throw new ConfigError(problem);
  return Object.keys(args).length === 0 ? undefined : JSON.stringify(args);
}

/**
 * One key bound (minKey, maxKey) as JSON text and its number of values: a value, or an array of
 * one value per key column, each a string, a finite number, a bigint (written as a JSON number,
 * exact) or a boolean. Throws ConfigError.
 */
export function keyBoundJson(bound: unknown, label: string): { json: string; count: number } | undefined {
  if (bound === undefined) return undefined;
  if (!Array.isArray(bound)) return { json: keyValueJson(bound, label), count: 1 };
  const values: readonly unknown[] = bound;
  if (values.length === 0) throw new ConfigError(`${label} is an empty array; give one value per key column`);
  const texts = Array.from({ length: values.length }, (_, i) => {
    if (!(i in values)) throw new ConfigError(`${childPath(label, i)} is an empty slot of a sparse array`);
    return keyValueJson(values[i], childPath(label, i));
  });
  return { json: `[${texts.join(', ')}]`, count: values.length };
}

function keyValueJson(value: unknown, path: string): string {
  if (typeof value === 'bigint') return String(value);
  if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
    throw new ConfigError(
      `${path} must be a string, a number, a bigint or a boolean (a key column's value), got ${describe(value)}`,
    );
  }
  const problem = jsonProblem(value, path);
  if (problem) throw new ConfigError(problem);
  return JSON.stringify(value);
}

/** A value as a message shows it: JSON where it has a form, else its kind. */
function describe(value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`;
  if (value instanceof Date) return 'a Date (give date.toISOString())';
  if (typeof value === 'object' && value !== null && !isPlainObject(value) && !Array.isArray(value)) {
    return kindOf(value);
  }
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
