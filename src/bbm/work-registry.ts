/** The work functions a worker has, by name. */
import { ConfigError } from './errors.ts';
import type { AnyWork, JobKey, Work } from './types.ts';

/**
 * What a work name may look like. The same text is a POSIX regex for SQL (`!~`): a migration
 * whose job_signature_name does not match can never be run and is failed as invalid_job_signature.
 */
export const VALID_WORK_NAME = '^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,199}$';
const validWorkName = new RegExp(VALID_WORK_NAME);

export class WorkRegistry {
  readonly #byName = new Map<string, Work<JobKey>>();

  constructor(work: readonly AnyWork[]) {
    // `as unknown`: Array.isArray would narrow a readonly array to any[].
    if (!Array.isArray(work)) throw new ConfigError('`work` must be an array of { name, do } objects');
    work.forEach((entry: AnyWork, index) => {
      const name: unknown = entry?.name;
      if (typeof name !== 'string' || !validWorkName.test(name)) {
        throw new ConfigError(
          `work[${index}].name ${JSON.stringify(name)} is not a valid work name (letters, digits, _ . : / -; at most 200)`,
        );
      }
      if (typeof entry.do !== 'function') throw new ConfigError(`work ${name}: \`do\` must be a function`);
      if (entry.verify !== undefined && typeof entry.verify !== 'function') {
        throw new ConfigError(`work ${name}: \`verify\` must be a function when given`);
      }
      if (this.#byName.has(name)) throw new ConfigError(`work ${name} is registered twice`);
      this.#byName.set(name, entry as Work<JobKey>);
    });
  }

  get(name: string): Work<JobKey> | undefined {
    return this.#byName.get(name);
  }

  get names(): string[] {
    return [...this.#byName.keys()];
  }
}

/** Whether `name` could name a work function at all. */
export function isValidWorkName(name: string): boolean {
  return validWorkName.test(name);
}
