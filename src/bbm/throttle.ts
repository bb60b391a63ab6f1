/**
 * Throttles: asked by a worker before its runs (at most every `throttleCheckMs`), each returns a
 * reason to hold back, or false. While one holds back, the worker runs nothing and backs off.
 */
import type { Throttle } from './types.ts';
import { maxReplicaLagBytes, readyWalSegments } from '../store/health.ts';

/**
 * Holds back while more than `maxReadySegments` WAL segments wait for the archiver (GitLab's
 * registry uses 42): a migration writing faster than WAL is archived fills the disk.
 */
export function walArchiveThrottle({ maxReadySegments = 42 }: { maxReadySegments?: number } = {}): Throttle {
  return async (db) => {
    const ready = await readyWalSegments(db);
    return ready !== null && ready > maxReadySegments
      ? `${ready} WAL segments wait for the archiver (limit ${maxReadySegments})`
      : false;
  };
}

/** Holds back while a streaming replica replays more than `maxLagBytes` behind the primary. */
export function replicaLagThrottle({ maxLagBytes = 64 * 1024 * 1024 }: { maxLagBytes?: number } = {}): Throttle {
  return async (db) => {
    const lag = await maxReplicaLagBytes(db);
    return lag !== null && lag > maxLagBytes ? `a replica lags ${lag} bytes behind (limit ${maxLagBytes})` : false;
  };
}

/** Holds back when any of `throttles` does. */
export function anyThrottle(...throttles: Throttle[]): Throttle {
  return async (db) => {
    for (const throttle of throttles) {
      const reason = await throttle(db);
      if (reason) return reason;
    }
    return false;
  };
}
