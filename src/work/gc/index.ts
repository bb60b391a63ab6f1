/**
 * The registry GC pack: sweeps over the `registry` data model (src/store/gc/schema.ts), each a
 * work function over ID ranges, each pass a migration enqueued by a schedule. Every sweep is
 * idempotent and bounded by its job's range. The sweeps that delete objects in the blob store
 * declare `sideEffects`: a rolled-back transaction cannot bring an object back, so `bbm rehearse`
 * refuses them.
 *
 *   gc.orphan_blobs          blobs no manifest references, older than a grace period: object, then row;
 *                            and blob objects no row points at (a push that died half way)
 *   gc.stale_uploads         upload sessions idle too long, and their staging objects (and strays)
 *   gc.ttl_expire            manifests not pulled within their repository's TTL: marked expired (never served again)
 *   gc.expired_cleanup       expired manifests deleted, up to a capacity per pass (their blobs become the orphan sweep's)
 *   gc.deleted_repositories  everything under repositories marked deleted (blobs left to the orphan sweep)
 *   gc.deleted_namespaces    namespaces marked deleted, once their repositories are purged (through gc.deleted_repositories)
 *   gc.expired_tags          tags past their expiry; manifests no live tag references are marked expired (then as gc.ttl_expire's)
 */
import type { Job, Schedule, Work } from '../../bbm/types.ts';
import type { Queryable } from '../../store/db.ts';
import {
  deleteBlobRows,
  deleteExpiredManifests,
  deleteStaleUploads,
  expireManifests,
  expireTags,
  keysInUse,
  lockOrphanCandidates,
  lockStrayScanCursor,
  purgeDeletedNamespaces,
  purgeDeletedRepositories,
  referencedBlobs,
  saveStrayScanCursor,
} from '../../store/gc/sweeps.ts';
import { reportedRows } from '../../store/jobs.ts';
import type { BlobStore, StoredObject } from './blob-store.ts';
import { noGcMetrics, type GcMetrics } from './metrics.ts';

export { FilesystemBlobStore, type BlobStore, type StoredObject } from './blob-store.ts';
export { BlobStoreError, S3BlobStore, type S3BlobStoreOptions } from './s3-blob-store.ts';
export { createGcMetrics, GC_METRIC_HELP, type GcKind, type GcMetrics } from './metrics.ts';
export { migrateGcSchema } from '../../store/apply-schema.ts';
export {
  markNamespaceDeleted,
  NamespaceDeletedError,
  setTagExpiry,
  setTtlPolicy,
  touchUpload,
} from '../../store/gc/registry.ts';

export interface GcOptions {
  store: BlobStore;
  metrics?: GcMetrics;
  /** Orphaned blobs younger than this are kept: a push in flight uploads blobs before its manifest [3600000: 1 h]. */
  orphanGraceMs?: number;
  /** Upload sessions idle longer than this are reaped [86400000: 24 h]. */
  uploadIdleMs?: number;
  /** At most this many expired manifests are deleted per pass of gc.expired_cleanup; the rest wait for the next pass [10000]. */
  expiredDeletesPerPass?: number;
  /** At most this many stray objects (objects no row points at) are deleted per pass [10000]. */
  strayObjectsPerPass?: number;
  /**
   * At most this many objects are looked at per pass in the search for strays; the next pass
   * continues where this one stopped [10000]. 0 turns the search off.
   */
  strayScanPerPass?: number;
  /** Object deletions a job keeps in flight at once [8]; a store may cap its own requests lower. */
  deleteConcurrency?: number;
}

export const GC_WORK = {
  orphanBlobs: 'gc.orphan_blobs',
  staleUploads: 'gc.stale_uploads',
  ttlExpire: 'gc.ttl_expire',
  expiredCleanup: 'gc.expired_cleanup',
  deletedRepositories: 'gc.deleted_repositories',
  deletedNamespaces: 'gc.deleted_namespaces',
  expiredTags: 'gc.expired_tags',
} as const;

/** The job's query handle as the store's statements take it (it accepts query configs too). */
const inJob = (job: Job): Queryable => ({ query: job.query as Queryable['query'] });

/**
 * Deletes objects, `concurrency` at a time; a key already gone counts as deleted (an earlier,
 * rolled-back attempt). On a failure, the deletions already started are let finish before it is
 * thrown, so that nothing touches the store after the job has ended.
 */
async function deleteObjects(store: BlobStore, keys: readonly string[], concurrency: number): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const lane = async () => {
    while (!failure && next < keys.length) {
      const key = keys[next++]!;
      try {
        await store.delete(key);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, keys.length) }, lane));
  if (failure) throw failure.error;
}

/**
 * Deletes objects under `prefix` older than `olderThan` that no row of `table` points at: what a
 * push or upload left when it died between writing its object and its row. Done by the first job
 * of a pass (the range starting at 1). It looks at `scanLimit` objects at most, continuing after
 * where the last pass stopped (the cursor commits with the job) and starting over once it reaches
 * the end, so that a store of millions of objects costs each pass a bounded job, not a full walk;
 * it deletes `deleteLimit` at most. Young objects may belong to a write in flight and are kept.
 */
async function deleteStrayObjects(
  job: Job,
  store: BlobStore,
  options: {
    prefix: string;
    table: 'blobs' | 'uploads';
    olderThan: Date;
    scanLimit: number;
    deleteLimit: number;
    concurrency: number;
  },
): Promise<{ count: number; bytes: number; scanned: number }> {
  const { prefix, table, olderThan, scanLimit, deleteLimit, concurrency } = options;
  if (job.start > 1n || scanLimit <= 0) return { count: 0, bytes: 0, scanned: 0 };
  const after = await lockStrayScanCursor(inJob(job), prefix);
  let count = 0;
  let bytes = 0;
  let scanned = 0;
  let last = after;
  let reachedEnd = true;
  let batch: StoredObject[] = [];
  const flush = async () => {
    const used = await keysInUse(
      inJob(job),
      table,
      batch.map((o) => o.key),
    );
    const strays = batch.filter((o) => !used.has(o.key)).slice(0, deleteLimit - count);
    await deleteObjects(
      store,
      strays.map((o) => o.key),
      concurrency,
    );
    count += strays.length;
    bytes += strays.reduce((sum, o) => sum + o.size, 0);
    batch = [];
  };
  for await (const object of store.list(prefix, undefined, after === '' ? undefined : after)) {
    scanned += 1;
    last = object.key;
    if (object.modifiedAt < olderThan) batch.push(object);
    if (batch.length === 500) await flush();
    if (scanned >= scanLimit || count >= deleteLimit) {
      reachedEnd = false;
      break;
    }
  }
  await flush();
  // At the end of the listing the next pass starts over; otherwise it continues after the last key seen.
  await saveStrayScanCursor(inJob(job), prefix, reachedEnd ? '' : last);
  return { count, bytes, scanned };
}

export function gcWork({
  store,
  metrics = noGcMetrics,
  orphanGraceMs = 3_600_000,
  uploadIdleMs = 86_400_000,
  expiredDeletesPerPass = 10_000,
  strayObjectsPerPass = 10_000,
  strayScanPerPass = 10_000,
  deleteConcurrency = 8,
}: GcOptions): Work[] {
  return [
    {
      name: GC_WORK.orphanBlobs,
      sideEffects: true,
      async do(job) {
        const candidates = await lockOrphanCandidates(inJob(job), job.start, job.end, orphanGraceMs);
        // Referenced after the candidates were read, before we locked them: kept.
        const referenced = await referencedBlobs(
          inJob(job),
          candidates.map((b) => b.id),
        );
        const orphans = candidates.filter((b) => !referenced.has(b.id));
        // Objects first: should the job die now, the rows stay and the next pass finishes the work.
        await deleteObjects(
          store,
          orphans.map((b) => b.storageKey),
          deleteConcurrency,
        );
        const deleted = await deleteBlobRows(
          inJob(job),
          orphans.map((b) => b.id),
        );
        const strays = await deleteStrayObjects(job, store, {
          prefix: 'blobs/',
          table: 'blobs',
          olderThan: new Date(Date.now() - orphanGraceMs),
          scanLimit: strayScanPerPass,
          deleteLimit: strayObjectsPerPass,
          concurrency: deleteConcurrency,
        });
        const bytes = orphans.reduce((sum, b) => sum + b.size, 0) + strays.bytes;
        metrics.deleted('blob', deleted);
        metrics.deleted('object', strays.count);
        metrics.bytesFreed(bytes);
        job.log.info(
          {
            deleted_blobs: deleted,
            kept_referenced: referenced.size,
            deleted_stray_objects: strays.count,
            scanned_objects: strays.scanned,
            bytes_freed: bytes,
          },
          'gc: orphaned blobs',
        );
        return deleted;
      },
    },
    {
      name: GC_WORK.staleUploads,
      sideEffects: true,
      async do(job) {
        const keys = await deleteStaleUploads(inJob(job), job.start, job.end, uploadIdleMs);
        await deleteObjects(store, keys, deleteConcurrency);
        const strays = await deleteStrayObjects(job, store, {
          prefix: 'uploads/',
          table: 'uploads',
          olderThan: new Date(Date.now() - uploadIdleMs),
          scanLimit: strayScanPerPass,
          deleteLimit: strayObjectsPerPass,
          concurrency: deleteConcurrency,
        });
        metrics.deleted('upload', keys.length);
        metrics.deleted('object', strays.count);
        job.log.info(
          { deleted_uploads: keys.length, deleted_stray_objects: strays.count, scanned_objects: strays.scanned },
          'gc: stale uploads',
        );
        return keys.length;
      },
    },
    {
      name: GC_WORK.ttlExpire,
      async do(job) {
        const expired = await expireManifests(inJob(job), job.start, job.end);
        job.log.info({ expired_manifests: expired }, 'gc: manifests expired');
        return expired;
      },
    },
    {
      name: GC_WORK.expiredCleanup,
      async do(job) {
        // The pass's capacity: what its earlier jobs deleted (they return their counts) counts against it.
        const capacity = expiredDeletesPerPass - (await reportedRows(inJob(job), job.migration.id));
        const deleted = capacity > 0 ? await deleteExpiredManifests(inJob(job), job.start, job.end, capacity) : 0;
        metrics.deleted('manifest', deleted);
        job.log.info({ deleted_manifests: deleted }, 'gc: expired manifests deleted');
        return deleted;
      },
    },
    {
      name: GC_WORK.deletedRepositories,
      sideEffects: true,
      async do(job) {
        const purged = await purgeDeletedRepositories(inJob(job), job.start, job.end);
        await deleteObjects(store, purged.uploadKeys, deleteConcurrency);
        metrics.deleted('manifest', purged.manifests);
        metrics.deleted('repository', purged.repositories);
        metrics.deleted('upload', purged.uploadKeys.length);
        job.log.info(
          { deleted_manifests: purged.manifests, deleted_repositories: purged.repositories },
          'gc: deleted repositories',
        );
        return purged.manifests;
      },
    },
    {
      name: GC_WORK.deletedNamespaces,
      sideEffects: true,
      async do(job) {
        const purged = await purgeDeletedNamespaces(inJob(job), job.start, job.end);
        await deleteObjects(store, purged.uploadKeys, deleteConcurrency);
        metrics.deleted('namespace', purged.namespaces);
        metrics.deleted('repository', purged.repositories);
        metrics.deleted('upload', purged.uploadKeys.length);
        job.log.info(
          { deleted_namespaces: purged.namespaces, deleted_repositories: purged.repositories },
          'gc: deleted namespaces',
        );
        return purged.namespaces;
      },
    },
    {
      name: GC_WORK.expiredTags,
      async do(job) {
        const expired = await expireTags(inJob(job), job.start, job.end);
        metrics.deleted('tag', expired.tags);
        job.log.info({ deleted_tags: expired.tags, expired_manifests: expired.manifests }, 'gc: expired tags');
        return expired.tags;
      },
    },
  ];
}

export interface GcScheduleOptions {
  /** How often each sweep runs: a period (`1h`) or a cron expression; a sweep set to null is not scheduled. */
  every?: Partial<Record<keyof typeof GC_WORK, string | null>>;
  batchSize?: number;
}

const SWEEP_TABLES: Record<keyof typeof GC_WORK, string> = {
  orphanBlobs: 'registry.blobs',
  staleUploads: 'registry.uploads',
  ttlExpire: 'registry.manifests',
  expiredCleanup: 'registry.manifests',
  deletedRepositories: 'registry.manifests',
  deletedNamespaces: 'registry.namespaces',
  expiredTags: 'registry.tags',
};

const DEFAULT_EVERY: Record<keyof typeof GC_WORK, string> = {
  orphanBlobs: '1h',
  staleUploads: '1h',
  ttlExpire: '1h',
  expiredCleanup: '1h',
  deletedRepositories: '15m',
  deletedNamespaces: '15m',
  expiredTags: '1h',
};

/** The pack's schedules, one per sweep, named like their work functions. */
export function gcSchedules({ every = {}, batchSize = 1_000 }: GcScheduleOptions = {}): Schedule[] {
  return (Object.keys(GC_WORK) as Array<keyof typeof GC_WORK>).flatMap((sweep) => {
    const cadence = every[sweep] === undefined ? DEFAULT_EVERY[sweep] : every[sweep];
    if (cadence === null) return [];
    return [
      {
        name: GC_WORK[sweep],
        work: GC_WORK[sweep],
        table: SWEEP_TABLES[sweep],
        column: 'id',
        batchSize,
        every: cadence,
      },
    ];
  });
}
