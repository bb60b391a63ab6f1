/**
 * Connection strings naming several hosts, as libpq accepts them, turned into what node-postgres
 * understands (one host per connection string) and a list of hosts to try in order:
 *
 * - the URL form, hosts listed in the authority:
 *   `postgres://user:pw@h1:5432,h2:5433/db?target_session_attrs=read-write`
 *   (`new URL` rejects it: the authority is split here);
 * - the keyword form: `host=h1,h2 port=5432,5433 dbname=db user=u password='p w'`
 *   (node-postgres reads no keyword strings at all: one host or several, it becomes a URL).
 *
 * A URL naming one host is given to node-postgres unchanged.
 */
import { ConfigError } from '../bbm/errors.ts';

/**
 * Which server of the list a connection may keep (libpq's target_session_attrs, the values a
 * worker can use): `read-write` one whose sessions take writes, `primary` one not in recovery,
 * `any` the first that accepts the connection.
 */
export type SessionAttrs = 'read-write' | 'primary' | 'any';

export interface HostPort {
  host: string;
  port: number;
}

export type ConnectionTarget =
  /** What node-postgres gets, as it gets it today (a keyword string made a URL). */
  | { kind: 'single'; connectionString: string }
  | {
      kind: 'several';
      /** A connection string to the first host; connections to the others differ only in host and port. */
      connectionString: string;
      hosts: HostPort[];
      targetSessionAttrs: SessionAttrs;
    };

const URL_FORM = /^(postgres(?:ql)?:\/\/)([^/?#]*)(.*)$/is;
/** A libpq keyword string starts with `keyword =`; anything else is left to node-postgres. */
const KEYWORD_FORM = /^\s*[A-Za-z_][A-Za-z0-9_]*\s*=/;

/** A multi-host list is this worker's own: a worker writes, so it wants a primary unless told otherwise. */
const DEFAULT_ATTRS: SessionAttrs = 'read-write';

const ACCEPTED_ATTRS: readonly string[] = ['read-write', 'primary', 'any'] satisfies SessionAttrs[];

/** Where a connection string connects; throws a ConfigError, which never quotes the password, on bad input. */
export function parseConnectionTarget(connectionString: string): ConnectionTarget {
  const url = URL_FORM.exec(connectionString);
  if (url) return parseUrl(connectionString, url[1]!, url[2]!, url[3]!);
  if (KEYWORD_FORM.test(connectionString)) return parseKeywords(connectionString);
  return { kind: 'single', connectionString };
}

function parseUrl(original: string, scheme: string, authority: string, rest: string): ConnectionTarget {
  const at = authority.lastIndexOf('@');
  const userinfo = at >= 0 ? authority.slice(0, at + 1) : '';
  const hostList = authority.slice(at + 1);
  if (!hostList.includes(',')) return { kind: 'single', connectionString: original };
  const queryStart = rest.indexOf('?');
  const path = queryStart >= 0 ? rest.slice(0, queryStart) : rest;
  // A '/', '?' or '#' left unencoded in the password ends the authority early: the rest of the
  // user information then shows up past it, and the "hosts" are the user name and password.
  const strayAt = rest.indexOf('@');
  const firstEquals = rest.indexOf('=');
  if (at < 0 && strayAt >= 0 && (firstEquals < 0 || strayAt < firstEquals)) {
    throw new ConfigError(
      "the database URL's user name or password holds a '/', '?' or '#': percent-encode it (%2F, %3F, %23)",
    );
  }
  const query = new URLSearchParams(queryStart >= 0 ? rest.slice(queryStart + 1).replace(/#.*$/s, '') : '');
  for (const key of ['host', 'hostaddr', 'port']) {
    if (query.has(key)) {
      throw new ConfigError(
        `the database URL lists several hosts and also a "${key}" parameter: name the hosts and ports in one place, the URL's authority (postgres://user@h1:5432,h2:5432/db)`,
      );
    }
  }
  const entries = hostList.split(',');
  const hosts = entries.map((entry, index) => hostEntry(entry, index, entries.length));
  const targetSessionAttrs = sessionAttrs(query);
  query.delete('target_session_attrs');
  const search = query.size > 0 ? `?${query.toString()}` : '';
  return {
    kind: 'several',
    connectionString: `${scheme}${userinfo}${entries[0]}${path}${search}`,
    hosts,
    targetSessionAttrs,
  };
}

/** One `host[:port]` of the URL's list; `[v6]:port` for IPv6; `%2F…` for a Unix socket directory. */
function hostEntry(entry: string, index: number, count: number): HostPort {
  const which = `host ${index + 1} of ${count} in the database URL`;
  if (entry === '') throw new ConfigError(`${which} is empty (two commas in a row, or one at an end)`);
  const match = /^(\[[^\]]*\]|[^:]*)(?::(.*))?$/s.exec(entry);
  if (!match || match[1] === '' || match[1] === '[]') throw new ConfigError(`${which} ("${entry}") names no host`);
  const host = decodeHost(match[1]!.replace(/^\[(.*)\]$/s, '$1'), which);
  return { host, port: port(match[2], which) };
}

function decodeHost(host: string, which: string): string {
  try {
    return decodeURIComponent(host);
  } catch {
    throw new ConfigError(`${which} has a bad percent-encoding`);
  }
}

/** The port as given, or libpq's default (PGPORT, else 5432) when none is. */
function port(text: string | undefined, which: string): number {
  if (text === undefined || text === '') return defaultPort();
  const value = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(value >= 1 && value <= 65535)) throw new ConfigError(`${which} has port "${text}": not a port number`);
  return value;
}

function defaultPort(): number {
  const fromEnv = Number(process.env.PGPORT);
  return Number.isInteger(fromEnv) && fromEnv >= 1 && fromEnv <= 65535 ? fromEnv : 5432;
}

function sessionAttrs(params: { get(key: string): string | null | undefined }): SessionAttrs {
  const value = params.get('target_session_attrs');
  if (value === null || value === undefined || value === '') return DEFAULT_ATTRS;
  if (ACCEPTED_ATTRS.includes(value)) return value as SessionAttrs;
  throw new ConfigError(
    `target_session_attrs=${value} is not supported: a worker writes, so it takes read-write (the default for several hosts), primary or any`,
  );
}

/**
 * The keyword form as a URL node-postgres reads: `host`, `port`, `dbname`, `user` and `password`
 * go where a URL puts them, every other keyword becomes a query parameter, as in a URL.
 */
function parseKeywords(connectionString: string): ConnectionTarget {
  const settings = keywordPairs(connectionString);
  if (settings.has('hostaddr')) {
    throw new ConfigError('hostaddr is not supported in the database URL: name the servers with host');
  }
  const hostNames = (settings.get('host') ?? '').split(',');
  const ports = settings.has('port') ? settings.get('port')!.split(',') : [];
  const count = hostNames.length;
  if (ports.length > 1 && ports.length !== count) {
    throw new ConfigError(
      `the database URL names ${count} host(s) and ${ports.length} ports: give one port for all, or one per host`,
    );
  }
  const hosts = hostNames.map((name, index) => {
    const which = `host ${index + 1} of ${count} in the database URL`;
    if (count > 1 && name === '') throw new ConfigError(`${which} is empty (two commas in a row, or one at an end)`);
    return { host: name, port: port(ports.length > 1 ? ports[index] : ports[0], which) };
  });
  const user = settings.get('user');
  const password = settings.get('password');
  const userinfo =
    user !== undefined || password !== undefined
      ? `${encodeURIComponent(user ?? '')}${password !== undefined ? `:${encodeURIComponent(password)}` : ''}@`
      : '';
  const query = new URLSearchParams();
  for (const [key, value] of settings) {
    if (!['host', 'port', 'dbname', 'user', 'password', 'target_session_attrs'].includes(key)) query.set(key, value);
  }
  const search = query.size > 0 ? `?${query.toString()}` : '';
  const dbname = settings.get('dbname');
  const path = dbname !== undefined ? `/${encodeURIComponent(dbname)}` : '/';
  const first = hosts[0]!;
  // An IPv6 address needs brackets in a URL; a socket directory is percent-encoded as a whole.
  const hostText = first.host.includes(':') ? `[${first.host}]` : encodeURIComponent(first.host);
  const portText = settings.has('port') ? `:${first.port}` : '';
  const url = `postgresql://${userinfo}${hostText}${hostText ? portText : ''}${path}${search}`;
  if (count === 1) {
    // One server, as libpq would reach it; an empty host (a socket, or localhost) stays node-postgres's default.
    const withQueryHost = !hostText && settings.has('port') ? `${url}${search ? '&' : '?'}port=${first.port}` : url;
    return { kind: 'single', connectionString: withQueryHost };
  }
  return { kind: 'several', connectionString: url, hosts, targetSessionAttrs: sessionAttrs(settings) };
}

/**
 * libpq's `keyword = value` pairs: values unquoted (ended by white space) or in single quotes,
 * with `\'` and `\\` escapes in either. A keyword given twice keeps its last value, as in libpq.
 */
function keywordPairs(text: string): Map<string, string> {
  const pairs = new Map<string, string>();
  let i = 0;
  const skipSpace = () => {
    while (i < text.length && /\s/.test(text[i]!)) i += 1;
  };
  for (;;) {
    skipSpace();
    if (i >= text.length) return pairs;
    const keyword = /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(i))?.[0];
    if (!keyword) throw new ConfigError(`the database URL's keyword form has no keyword at character ${i + 1}`);
    i += keyword.length;
    skipSpace();
    if (text[i] !== '=') throw new ConfigError(`the database URL's keyword form has no "=" after "${keyword}"`);
    i += 1;
    skipSpace();
    let value = '';
    if (text[i] === "'") {
      i += 1;
      for (;;) {
        if (i >= text.length) {
          throw new ConfigError(`the database URL's keyword form leaves the quoted value of "${keyword}" open`);
        }
        const char = text[i]!;
        i += 1;
        if (char === "'") break;
        if (char === '\\' && i < text.length) {
          value += text[i]!;
          i += 1;
        } else value += char;
      }
    } else {
      while (i < text.length && !/\s/.test(text[i]!)) {
        if (text[i] === '\\' && i + 1 < text.length) i += 1;
        value += text[i]!;
        i += 1;
      }
    }
    pairs.set(keyword, value);
  }
}

/** The password of a keyword-form string, or of a URL `new URL` cannot read (several hosts). */
export function passwordInConnectionString(connectionString: string): string | undefined {
  try {
    if (KEYWORD_FORM.test(connectionString)) return keywordPairs(connectionString).get('password') || undefined;
    const authority = URL_FORM.exec(connectionString)?.[2];
    const at = authority?.lastIndexOf('@') ?? -1;
    if (!authority || at < 0) return undefined;
    const colon = authority.slice(0, at).indexOf(':');
    return colon >= 0 ? decodeURIComponent(authority.slice(colon + 1, at)) || undefined : undefined;
  } catch {
    return undefined;
  }
}

/** A keyword-form string with its password replaced by `***`; other strings unchanged. */
export function maskKeywordPassword(connectionString: string): string {
  if (!KEYWORD_FORM.test(connectionString)) return connectionString;
  return connectionString.replace(/(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*)/g, '$1***');
}
