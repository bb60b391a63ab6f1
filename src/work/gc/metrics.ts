/** What the GC sweeps free, for Prometheus: `bbm_gc_deleted_total{kind}` and `bbm_gc_bytes_freed_total`. */
import { Counter, type Registry } from 'prom-client';

export type GcKind = 'blob' | 'object' | 'upload' | 'manifest' | 'tag' | 'repository' | 'namespace';

export interface GcMetrics {
  deleted(kind: GcKind, count: number): void;
  bytesFreed(bytes: number): void;
}

export const GC_METRIC_HELP = {
  bbm_gc_deleted_total:
    'Things the GC sweeps deleted, by kind: blob, object (stray, with no row), upload, manifest, tag, repository, namespace.',
  bbm_gc_bytes_freed_total: 'Bytes of blob objects the GC sweeps deleted from the blob store.',
} as const;

export function createGcMetrics(registry: Registry): GcMetrics {
  const deleted = new Counter({
    name: 'bbm_gc_deleted_total',
    help: GC_METRIC_HELP.bbm_gc_deleted_total,
    labelNames: ['kind'],
    registers: [registry],
  });
  const bytes = new Counter({
    name: 'bbm_gc_bytes_freed_total',
    help: GC_METRIC_HELP.bbm_gc_bytes_freed_total,
    registers: [registry],
  });
  return {
    deleted: (kind, count) => {
      if (count > 0) deleted.inc({ kind }, count);
    },
    bytesFreed: (count) => {
      if (count > 0) bytes.inc(count);
    },
  };
}

/** For a pack set up without metrics. */
export const noGcMetrics: GcMetrics = { deleted: () => {}, bytesFreed: () => {} };
