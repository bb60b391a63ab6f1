/**
 * What a pool is given to reach the database a connection string names: the string itself for
 * one server (a keyword string made a URL node-postgres reads), or, for several, a connection
 * string to the first and a Client class that picks the server (failover.ts).
 */
import type pg from 'pg';
import { failoverClient, type ClientClass } from './failover.ts';
import { parseConnectionTarget } from './hosts.ts';

export type { ClientClass };

export function poolTarget(connectionString: string): Pick<pg.PoolConfig, 'connectionString' | 'Client'> {
  const target = parseConnectionTarget(connectionString);
  if (target.kind === 'single') return { connectionString: target.connectionString };
  return {
    connectionString: target.connectionString,
    Client: failoverClient(target.hosts, target.targetSessionAttrs),
  };
}
