/**
 * The query handle a work function gets: the run's connection, fenced so that the work can
 * neither end the run's transaction nor keep using it after its job is over (a timed-out
 * work function may still be running when the engine records the failure).
 */
import type pg from 'pg';
import { isTransactionControl } from '../store/tx.ts';

type QueryArgs = [textOrConfig: string | pg.QueryConfig, values?: unknown[]];

export class JobSession {
  #closed = false;
  readonly #inFlight = new Set<Promise<unknown>>();

  constructor(private readonly client: pg.PoolClient) {}

  /** pg's `query(text | config, values)`; drizzle calls it with a config object. */
  query = <R extends pg.QueryResultRow = pg.QueryResultRow>(
    ...[textOrConfig, values]: QueryArgs
  ): Promise<pg.QueryResult<R>> => {
    if (this.#closed) {
      return Promise.reject(
        new Error('this job is over (finished, failed or timed out); its transaction can no longer be used'),
      );
    }
    const text = typeof textOrConfig === 'string' ? textOrConfig : textOrConfig.text;
    if (isTransactionControl(text)) {
      return Promise.reject(
        new Error(
          'a work function cannot end or restart the job transaction; use job.db.transaction() for a savepoint',
        ),
      );
    }
    const pending = this.client.query<R>(textOrConfig as string, values);
    this.#inFlight.add(pending);
    const forget = () => this.#inFlight.delete(pending);
    pending.then(forget, forget);
    return pending;
  };

  get busy(): boolean {
    return this.#inFlight.size > 0;
  }

  /** No query from the work function runs after this. */
  close(): void {
    this.#closed = true;
  }

  /** Resolves once every query the work function sent has returned (or failed). */
  async settled(): Promise<void> {
    if (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }
}
