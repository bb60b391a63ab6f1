/** Several hosts in the database URL, as libpq takes them. */
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../src/bbm/errors.ts';
import { maskConnectionString, passwordOf } from '../src/store/db.ts';
import { parseConnectionTarget } from '../src/store/hosts.ts';

describe('a connection string naming several hosts', () => {
  it('in the URL form: the hosts in order, a connection string to the first, read-write by default', () => {
    expect(parseConnectionTarget('postgres://u:p%40ss@h1:5432,h2:5433/app?sslmode=disable')).toEqual({
      kind: 'several',
      connectionString: 'postgres://u:p%40ss@h1:5432/app?sslmode=disable',
      hosts: [
        { host: 'h1', port: 5432 },
        { host: 'h2', port: 5433 },
      ],
      targetSessionAttrs: 'read-write',
    });
    const v6 = parseConnectionTarget('postgresql://[::1]:6000,db.internal/app?target_session_attrs=any');
    expect(v6).toMatchObject({
      connectionString: 'postgresql://[::1]:6000/app',
      hosts: [
        { host: '::1', port: 6000 },
        { host: 'db.internal', port: 5432 },
      ],
      targetSessionAttrs: 'any',
    });
  });

  it("in the keyword form: one port for all hosts or one each, quoted values, the rest as a URL's parameters", () => {
    const several = parseConnectionTarget(
      `host=h1,h2 port=5432,5433 dbname=app user=me password='a b\\'c' application_name = x target_session_attrs=primary`,
    );
    expect(several).toEqual({
      kind: 'several',
      connectionString: "postgresql://me:a%20b'c@h1:5432/app?application_name=x",
      hosts: [
        { host: 'h1', port: 5432 },
        { host: 'h2', port: 5433 },
      ],
      targetSessionAttrs: 'primary',
    });
    expect(parseConnectionTarget('host=h1,h2,h3 port=6000 dbname=app')).toMatchObject({
      hosts: [6000, 6000, 6000].map((port, i) => ({ host: `h${i + 1}`, port })),
    });
  });

  it('with one host, is given to node-postgres as before (a keyword string as the URL it means)', () => {
    for (const url of [
      'postgres://u:p@h1:5432/app?sslmode=disable',
      'postgresql://u@h1/app',
      '/var/run/postgresql app',
      'socket:/var/run/postgresql?db=app',
    ]) {
      expect(parseConnectionTarget(url)).toEqual({ kind: 'single', connectionString: url });
    }
    expect(parseConnectionTarget("host=h1 port=5433 dbname=app user=me password='p w'")).toEqual({
      kind: 'single',
      connectionString: 'postgresql://me:p%20w@h1:5433/app',
    });
  });

  it('refuses bad lists with a ConfigError that names the fault and never the password', () => {
    const bad: Array<[string, RegExp]> = [
      ['postgres://u:secret@h1,,h2/app', /host 2 of 3 in the database URL is empty/],
      ['postgres://u:secret@h1:54x2,h2/app', /host 1 of 2 in the database URL has port "54x2": not a port number/],
      ['postgres://u:secret@h1:70000,h2/app', /not a port number/],
      ['postgres://u:secret@h1,h2/app?target_session_attrs=standby', /target_session_attrs=standby is not supported/],
      ['postgres://u:secret@h1,h2/app?target_session_attrs=prefer-standby', /prefer-standby is not supported/],
      ['postgres://u:secret@h1,h2/app?host=h3', /also a "host" parameter/],
      ['postgres://u:sec,re/t@h1,h2/app', /percent-encode it/],
      ["host=h1,h2 port=1,2,3 password='secret'", /names 2 host\(s\) and 3 ports/],
      ["host=h1 password='secret", /leaves the quoted value of "password" open/],
      ['host=h1,h2 password secret', /no "=" after "password"/],
      ['host=h1,h2 hostaddr=10.0.0.1 password=secret', /hostaddr is not supported/],
    ];
    for (const [url, message] of bad) {
      let thrown: unknown;
      try {
        parseConnectionTarget(url);
      } catch (error) {
        thrown = error;
      }
      expect(thrown, url).toBeInstanceOf(ConfigError);
      expect((thrown as Error).message, url).toMatch(message);
      expect((thrown as Error).message, url).not.toMatch(/secret|sec,re/);
    }
  });

  it('masks the password of either form in logs, and finds it for redaction', () => {
    const url = 'postgres://me:s3cret@h1:5432,h2:5433/app';
    expect(maskConnectionString(url)).toBe('postgres://me:***@h1:5432,h2:5433/app');
    expect(passwordOf(url)).toBe('s3cret');
    const keywords = "host=h1,h2 user=me password='s3 cret' dbname=app";
    expect(maskConnectionString(keywords)).toBe('host=h1,h2 user=me password=*** dbname=app');
    expect(passwordOf(keywords)).toBe('s3 cret');
  });
});
