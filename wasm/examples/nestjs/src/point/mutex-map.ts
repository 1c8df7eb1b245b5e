import { Mutex } from 'async-mutex';
import type { UserLock } from './user-lock.interceptor';

/**
 * What the course's correct solutions write by hand, the baseline of
 * bench/compare.sh: one async-mutex `Mutex` per user in a `Map`, created on a
 * user's first request and never deleted (deleting one that another request
 * still holds or awaits would let two requests of the user run at once).
 */
export class MutexMap implements UserLock {
  private readonly mutexes = new Map<number | string, Mutex>();

  withLock<T>(key: number | string, fn: () => T | PromiseLike<T>): Promise<T> {
    let mutex = this.mutexes.get(key);
    if (!mutex) {
      mutex = new Mutex();
      this.mutexes.set(key, mutex);
    }
    return mutex.runExclusive(fn as () => T | Promise<T>);
  }

  /** Users whose mutex is held right now (the map itself only grows). */
  get size(): number {
    let held = 0;
    for (const mutex of this.mutexes.values()) if (mutex.isLocked()) held += 1;
    return held;
  }
}
