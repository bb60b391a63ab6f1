/**
 * The health signals of a Citus cluster's worker nodes, read through the coordinator. On Citus the
 * work writes the shards, on the worker nodes: their WAL, their replicas, their long
 * transactions, their replication slots and the vacuums of the shards are what a migration
 * strains, and the coordinator's own show almost none of it. The coordinator runs the signals'
 * reads (health.ts, SIGNAL_SQL) on every active worker node with `run_command_on_workers`, over
 * its own connections to them, as the worker's role: one statement a check, whatever the number
 * of nodes.
 */
import { sql } from 'drizzle-orm';
import type pg from 'pg';
import { citusInstalled } from './citus.ts';
import { exec } from './db.ts';
import { SIGNAL_SQL, slotsOf, type SlotRow, type SlotWal } from './health.ts';
import { atomically } from './tx.ts';
import type { NodeVacuum } from './migration-rows.ts';

/**
 * How long the read waits to connect to a node, and for all of it. Every lane of a worker waits
 * for its health check: a node that does not answer (Citus' own connect timeout is 30 s) must not
 * stall the migrations for longer than a job might take.
 */
const NODE_CONNECT_TIMEOUT_MS = 5_000;
const READ_TIMEOUT_MS = 10_000;

/** What one worker node's signals read. */
export interface NodeSignals {
  /** `host:port`, as the coordinator knows the node. */
  node: string;
  readyWal: number | null;
  replicaLagBytes: number | null;
  oldestTransaction: { ageMs: number; pid: number | null } | null;
  slots: SlotWal[];
  /** The vacuums running on the node (of shards, and of the node's own tables). */
  vacuums: NodeVacuum[];
}

/** A worker node whose signals could not be read, and why (its error). */
export interface NodeUnread {
  node: string;
  error: string;
}

/** All the signals of a node as one JSON value (run_command_on_workers takes one column). */
const NODE_SIGNALS_SQL = `
  SELECT pg_catalog.json_build_object(
    'ready', (${SIGNAL_SQL.readyWal}),
    'lag', (${SIGNAL_SQL.replicaLag}),
    'oldest', (SELECT pg_catalog.row_to_json(o) FROM (${SIGNAL_SQL.oldestTransaction}) o),
    'slots', (SELECT pg_catalog.json_agg(s) FROM (${SIGNAL_SQL.slots}) s),
    'vacuums', (SELECT pg_catalog.json_agg(v) FROM (SELECT schema, relname, kind FROM (${SIGNAL_SQL.vacuums}) v0) v))::text`;

interface NodeJson {
  ready: number | null;
  lag: number | null;
  oldest: { age_ms: number; pid: number | null } | null;
  slots: SlotRow[] | null;
  vacuums: Array<Omit<NodeVacuum, 'node'>> | null;
}

/** Whether a pool's database has Citus: looked up once per pool (an extension is not added under a running worker often). */
const citusOf = new WeakMap<pg.Pool, Promise<boolean>>();

async function hasCitus(db: pg.Pool): Promise<boolean> {
  let known = citusOf.get(db);
  if (!known) {
    known = citusInstalled(db);
    citusOf.set(db, known);
    known.catch(() => citusOf.delete(db));
  }
  return known;
}

/**
 * The signals of every active worker node of the Citus cluster this is the coordinator of; empty
 * without Citus (or without worker nodes). A node that could not be read is in `unread`, and so
 * is every node, as `worker nodes`, when the read itself failed (a timeout, a refusal): it never
 * throws for a node, so that the coordinator's own signals are read all the same.
 */
export async function workerNodeSignals(db: pg.Pool): Promise<{ read: NodeSignals[]; unread: NodeUnread[] }> {
  if (!(await hasCitus(db))) return { read: [], unread: [] };
  try {
    return signalsOf(await readNodes(db));
  } catch (error) {
    return { read: [], unread: [{ node: 'worker nodes', error: (error as Error).message }] };
  }
}

type NodeRow = { nodename: string; nodeport: number; success: boolean; result: string | null };

function readNodes(db: pg.Pool): Promise<NodeRow[]> {
  return atomically(db, async (client) => {
    await exec(
      client,
      sql`SELECT pg_catalog.set_config('citus.node_connection_timeout', ${String(NODE_CONNECT_TIMEOUT_MS)}, true),
                 pg_catalog.set_config('statement_timeout', ${String(READ_TIMEOUT_MS)}, true)`,
    );
    return exec<NodeRow>(
      client,
      sql`SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers(${NODE_SIGNALS_SQL})`,
    );
  });
}

function signalsOf(rows: NodeRow[]): { read: NodeSignals[]; unread: NodeUnread[] } {
  const read: NodeSignals[] = [];
  const unread: NodeUnread[] = [];
  for (const row of rows) {
    const node = `${row.nodename}:${row.nodeport}`;
    try {
      if (!row.success || row.result === null) throw new Error(row.result ?? 'no answer');
      const json = JSON.parse(row.result) as NodeJson;
      read.push({
        node,
        readyWal: json.ready === null ? null : Number(json.ready),
        replicaLagBytes: json.lag === null ? null : Number(json.lag),
        oldestTransaction: json.oldest && { ageMs: Number(json.oldest.age_ms), pid: json.oldest.pid },
        slots: slotsOf(json.slots ?? []),
        vacuums: (json.vacuums ?? []).map((vacuum) => ({ ...vacuum, node })),
      });
    } catch (error) {
      unread.push({ node, error: (error as Error).message });
    }
  }
  return { read, unread };
}
