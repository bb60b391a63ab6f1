/**
 * A registry's push, pull, upload and delete, over the GC pack's data model and a blob store:
 * what the demo and the tests use to put images in place for the sweeps. Blobs are stored under
 * `blobs/sha256/<digest>`, upload sessions under `uploads/<uuid>`.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Queryable } from '../store/db.ts';
import {
  createRepository,
  markNamespaceDeleted,
  markRepositoryDeleted,
  pullManifest,
  startUpload,
  upsertBlob,
  upsertManifest,
  type PulledManifest,
} from '../store/gc/registry.ts';
import type { BlobStore } from '../work/gc/blob-store.ts';

export const sha256 = (data: Uint8Array): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
export const blobKey = (digest: string): string => `blobs/${digest.replace(':', '/')}`;

/**
 * Stores a blob: its object, then its row. A row whose object is missing (a sweep deleted the
 * object, then died before deleting the row) gets its object back.
 */
export async function pushBlob(
  db: Queryable,
  store: BlobStore,
  data: Uint8Array,
): Promise<{ id: bigint; digest: string }> {
  const digest = sha256(data);
  const key = blobKey(digest);
  if (!(await store.exists(key))) await store.put(key, data);
  const id = await upsertBlob(db, { digest, size: data.byteLength, storageKey: key });
  return { id, digest };
}

/** Pushes an image: its layers as blobs, then a manifest referencing them, tagged. */
export async function pushImage(
  db: Queryable,
  store: BlobStore,
  image: { repository: string; tag?: string; layers: readonly Uint8Array[] },
): Promise<{ repositoryId: bigint; manifestId: bigint; digest: string; blobs: Array<{ id: bigint; digest: string }> }> {
  const repositoryId = await createRepository(db, image.repository);
  const blobs = [];
  for (const layer of image.layers) blobs.push(await pushBlob(db, store, layer));
  const digest = sha256(Buffer.from(JSON.stringify(blobs.map((b) => b.digest))));
  const manifestId = await upsertManifest(db, {
    repositoryId,
    digest,
    blobIds: blobs.map((b) => b.id),
    tag: image.tag,
  });
  return { repositoryId, manifestId, digest, blobs };
}

/** Resolves a tag or digest; expired manifests and deleted repositories are absent. */
export function pull(db: Queryable, repository: string, reference: string): Promise<PulledManifest | null> {
  return pullManifest(db, repository, reference);
}

/** Opens an upload session with some bytes staged. */
export async function openUpload(
  db: Queryable,
  store: BlobStore,
  repository: string,
  staged: Uint8Array,
): Promise<{ id: bigint; key: string }> {
  const repositoryId = await createRepository(db, repository);
  const key = `uploads/${randomUUID()}`;
  await store.put(key, staged);
  return { id: await startUpload(db, repositoryId, key), key };
}

export async function deleteRepository(db: Queryable, repository: string): Promise<void> {
  await markRepositoryDeleted(db, await createRepository(db, repository));
}

export async function deleteNamespace(db: Queryable, namespace: string): Promise<void> {
  if (!(await markNamespaceDeleted(db, namespace))) throw new Error(`no namespace ${namespace}`);
}
