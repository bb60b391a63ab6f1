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
  /**
   * The objects under `prefix` in ascending key order (byte order, as S3 lists), optionally only
   * those last modified before `olderThan`, and only those whose key sorts after `startAfter`.
   */
  list(prefix: string, olderThan?: Date, startAfter?: string): AsyncIterable<StoredObject>;
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

  async *list(prefix: string, olderThan?: Date, startAfter?: string): AsyncIterable<StoredObject> {
    const base = prefix === '' ? this.root : this.#path(prefix.replace(/\/$/, ''));
    yield* this.#walk(base, olderThan, startAfter);
  }

  /**
   * A directory's files and, depth first, its subdirectories', in the order of their keys: a
   * subdirectory `a` sorts as `a/`, so that `a-b` comes before everything under `a/`, as in S3.
   * Files at or before `startAfter`, and subdirectories whose keys all sort before it (unless
   * `startAfter` lies inside), are passed over unread; files are stat'ed only as the caller asks for
   * them, so a caller that stops early pays for what it took.
   */
  async *#walk(directory: string, olderThan?: Date, startAfter?: string): AsyncGenerator<StoredObject> {
    let entries;
    try {
      entries = await readdir(directory, { withFileTypes: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    const relative = path.relative(this.root, directory).split(path.sep).join('/');
    const keyPrefix = relative === '' ? '' : `${relative}/`;
    // A directory of a million objects is a million entries: filter before sorting, and build keys by concatenation.
    const keyed = [];
    for (const entry of entries) {
      const isDirectory = entry.isDirectory();
      if (!isDirectory && (!entry.isFile() || entry.name.endsWith('.partial'))) continue;
      const key = keyPrefix + entry.name;
      const order = isDirectory ? `${key}/` : key;
      if (startAfter !== undefined && order <= startAfter && !(isDirectory && startAfter.startsWith(order))) continue;
      keyed.push({ entry, key, order });
    }
    keyed.sort((a, b) => (a.order < b.order ? -1 : a.order > b.order ? 1 : 0));
    for (const { entry, key } of keyed) {
      if (entry.isDirectory()) {
        yield* this.#walk(path.join(directory, entry.name), olderThan, startAfter);
        continue;
      }
      let info;
      try {
        info = await stat(path.join(directory, entry.name));
      } catch (error) {
        // Deleted since the directory was read: a concurrent sweep or delete.
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw error;
      }
      if (olderThan && info.mtime >= olderThan) continue;
      yield { key, size: info.size, modifiedAt: info.mtime };
    }
  }
}
