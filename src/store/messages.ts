/**
 * Text stored on rows that comes from outside pg-bbm's control: a work function's error message,
 * and what is built from one (a migration's failure message, a run error's hold reason). Such a
 * message is data: a PostgreSQL text column refuses a NUL byte (22021, which would fail the
 * statement that records the failure, and with it the run), and a lone UTF-16 surrogate cannot be
 * encoded as UTF-8. Every function in src/store that writes a message passes it through here.
 */

/** Characters a stored message keeps; longer ones are cut (a work function may throw something huge). */
export const MESSAGE_LIMIT = 2000;

/** A surrogate not part of a pair: a high one with no low one after it, or a low one with no high one before. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * `text` as it can be stored: each NUL written as the six characters `\u0000` (so the message
 * still says there was one), each lone surrogate as U+FFFD, and at most `limit` characters, the
 * last of them `…` when cut (never cutting a surrogate pair in two). Idempotent, and text that
 * needs none of this comes back unchanged.
 */
export function storableMessage(text: string, limit = MESSAGE_LIMIT): string {
  const clean = text.replaceAll('\u0000', '\\u0000').replace(LONE_SURROGATE, '\ufffd');
  if (clean.length <= limit) return clean;
  let end = limit - 1;
  // Cutting between the halves of a pair would leave a lone high surrogate.
  const last = clean.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end -= 1;
  return `${clean.slice(0, end)}…`;
}
