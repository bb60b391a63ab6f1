/**
 * Where blob bytes live. The GC sweeps need only these four operations: a directory on the
 * filesystem (here) and S3-compatible object storage (s3-blob-store.ts) implement them. The sweeps
 * call a store concurrently.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

export interface StoredObject {
  key: string;
  size: number;
  modifiedAt: Date;
}

export interface BlobStore {
  /** Writes an object; replaces one with the same key. */
  put(key: string, data: Uint8Array): Promise<void>;
  /** Deletes an object; one that is not there is fine (a sweep retried after a crash deletes again). */
  delete(key: string): Promise<void>;
  exists(key: string): Promise<boolean>;
  /** The objects under `prefix`, optionally only those last modified before `olderThan`. */
  list(prefix: string, olderThan?: Date): AsyncIterable<StoredObject>;
}

/** Keys are relative paths of safe characters: no `..`, no leading `/`. */
const KEY = /^[A-Za-z0-9_.:-]+(\/[A-Za-z0-9_.:-]+)*$/;

export function checkKey(key: string): string {
  if (!KEY.test(key) || key.split('/').some((part) => part === '.' || part === '..')) {
    throw new Error(`invalid object key ${JSON.stringify(key)}`);
  }
  return key;
}

export class FilesystemBlobStore implements BlobStore {
  constructor(readonly root: string) {}

  #path(key: string): string {
    return path.join(this.root, checkKey(key));
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    const target = this.#path(key);
    await mkdir(path.dirname(target), { recursive: true });
    // Write aside, then rename: a reader never sees half an object.
    const temporary = `${target}.${randomBytes(6).toString('hex')}.partial`;
    await writeFile(temporary, data);
    await rename(temporary, target);
  }

  async delete(key: string): Promise<void> {
    await rm(this.#path(key), { force: true });
  }

  async exists(key: string): Promise<boolean> {
    try {
      return (await stat(this.#path(key))).isFile();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw error;
    }
  }

  async *list(prefix: string, olderThan?: Date): AsyncIterable<StoredObject> {
    const base = prefix === '' ? this.root : this.#path(prefix.replace(/\/$/, ''));
    let entries;
    try {
      entries = await readdir(base, { withFileTypes: true, recursive: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    for (const entry of entries) {
      if (!entry.isFile() || entry.name.endsWith('.partial')) continue;
      const full = path.join(entry.parentPath, entry.name);
      let info;
      try {
        info = await stat(full);
      } catch (error) {
        // Deleted since the directory was read: a concurrent sweep or delete.
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw error;
      }
      if (olderThan && info.mtime >= olderThan) continue;
      yield { key: path.relative(this.root, full).split(path.sep).join('/'), size: info.size, modifiedAt: info.mtime };
    }
  }
}
