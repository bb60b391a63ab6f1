/**
 * `npm run bench -- --cpu`: where a method's CPU goes, per job, read from /proc (Linux only).
 *
 * On a machine where the database and the benchmark share the cores, a method is as fast as the
 * CPU it spends per job allows, so each pass is charged what the machine spent during it:
 *
 * - `busyUs`, `idleUs`: all cores' busy and idle time (/proc/stat; idle includes iowait), so a
 *   method that waits (for locks, flushes, a round trip) shows idle time, one that computes shows busy;
 * - `databaseUs`: the database server's processes (the postmaster's children: backends,
 *   autovacuum, WAL writer, checkpointer, and those that exited during the pass), when the server
 *   runs on this machine (embedded, or DATABASE_URL on localhost);
 * - `benchUs`: this process (the engine's JavaScript, or the plain loops'), all threads.
 *
 * Rates alone cannot tell a method that computes more from one that waits more; charged by CPU,
 * the engine's statements at 1,000-row jobs cost the database 200-370 µs a job more than the
 * exactly-once loop in interleaved runs, a sum of small parts (README, Performance). Autovacuum is
 * charged to whichever pass it runs in (throughput.ts vacuums its table before each pass instead,
 * with autovacuum off on it). Reading /proc costs a few milliseconds a pass, outside
 * the timed part.
 */
import { readdirSync, readFileSync } from 'node:fs';
import type pg from 'pg';

export interface CpuSnapshot {
  busyNs: number;
  idleNs: number;
  /** Null when the server's processes are not visible here. */
  databaseNs: number | null;
  benchNs: number;
}

export interface CpuPerJob {
  busyUs: number;
  idleUs: number;
  databaseUs: number | null;
  benchUs: number;
}

/** /proc/stat and /proc/<pid>/stat count in clock ticks; Linux reports them at 100 a second. */
const TICK_NS = 10_000_000;

/** The fields after a /proc/<pid>/stat line's command name, which may hold spaces. */
function statFields(pid: number | string): string[] {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return text.slice(text.lastIndexOf(')') + 2).split(' ');
}

/** Nanoseconds a process has run (/proc/<pid>/schedstat's first field). */
function runNs(pid: number | string): number {
  return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]);
}

/**
 * A meter for one database, or null where /proc is not there. The server's postmaster is found
 * as the parent of a backend of `pool`, so the figures cover a server on this machine only.
 */
export async function cpuMeter(pool: pg.Pool): Promise<(() => CpuSnapshot) | null> {
  try {
    readFileSync('/proc/stat', 'utf8');
  } catch {
    return null;
  }
  let postmaster: number | null = null;
  try {
    const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const backend = rows[0]!.pid;
    // A server elsewhere has pids that mean nothing here, or name some other process.
    if (readFileSync(`/proc/${backend}/cmdline`, 'utf8').startsWith('postgres')) {
      // Fields from the state on: state, ppid, …
      postmaster = Number(statFields(backend)[1]);
    }
  } catch {
    postmaster = null;
  }
  return () => {
    const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = cpu;
    const usage = process.cpuUsage();
    return {
      busyNs: (user + nice + system + irq + softirq + steal) * TICK_NS,
      idleNs: (idle + iowait) * TICK_NS,
      databaseNs: postmaster === null ? null : databaseNs(postmaster),
      benchNs: (usage.user + usage.system) * 1000,
    };
  };
}

/** The postmaster's own time, its children's, and its exited children's (cutime, cstime). */
function databaseNs(postmaster: number): number | null {
  try {
    const own = statFields(postmaster);
    let ns = runNs(postmaster) + (Number(own[13]) + Number(own[14])) * TICK_NS;
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        if (Number(statFields(entry)[1]) === postmaster) ns += runNs(entry);
      } catch {
        // The process exited between the listing and the read: its time is in cutime now.
      }
    }
    return ns;
  } catch {
    return null;
  }
}

/** What a pass cost per job, from the snapshots before and after it. */
export function perJob(before: CpuSnapshot, after: CpuSnapshot, jobs: number): CpuPerJob {
  const us = (ns: number) => Math.round(ns / jobs / 1000);
  return {
    busyUs: us(after.busyNs - before.busyNs),
    idleUs: us(after.idleNs - before.idleNs),
    databaseUs:
      before.databaseNs === null || after.databaseNs === null ? null : us(after.databaseNs - before.databaseNs),
    benchUs: us(after.benchNs - before.benchNs),
  };
}
