/** Telling observers about runs and waits, so that no observer can break the loop that tells them. */
import type { Logger } from './log.ts';
import type { WorkerObserver } from './types.ts';

/** Calls every observer; one that throws is logged, and the others still hear. */
export function tellObservers(
  observers: readonly WorkerObserver[],
  log: Logger,
  call: (observer: WorkerObserver) => void,
): void {
  for (const observer of observers) {
    try {
      call(observer);
    } catch (error) {
      log.error({ err: error }, 'a worker observer threw; ignored');
    }
  }
}

/** How a part of the worker tells its observers (tellObservers, bound to them and the log). */
export type Tell = (call: (observer: WorkerObserver) => void) => void;
