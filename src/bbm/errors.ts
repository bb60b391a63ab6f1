/**
 * Error codes: the small enum stored in `failure_error_code`, shown by name in logs and JSON.
 */
import { ErrorCode, errorCodeName, type ErrorCodeName } from '../store/codes.ts';
import { MESSAGE_LIMIT, storableMessage } from '../store/messages.ts';

export { ErrorCode, errorCodeName, type ErrorCodeName };

/** A failure the engine records on a migration or job row, with its code. */
export class BbmError extends Error {
  override readonly name = 'BbmError';
  readonly code: ErrorCodeName;

  constructor(code: ErrorCodeName, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** Bad configuration or arguments, found before any work starts. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** The error as an Error, whatever was thrown. */
export function asError(thrown: unknown): Error {
  if (thrown instanceof Error) return thrown;
  return new Error(typeof thrown === 'string' ? thrown : `non-Error thrown: ${safeString(thrown)}`);
}

function safeString(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** An error's message as it is stored on a row (see storableMessage): bounded, and with no NUL or lone surrogate. */
export function storedMessage(error: Error, limit = MESSAGE_LIMIT): string {
  return storableMessage(error.message || error.name, limit);
}
