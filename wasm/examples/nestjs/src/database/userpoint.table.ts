import { UserPoint } from '../point/point.model';
import { afterLatency } from './latency';

/**
 * The course template's `UserPointTable`: a `Map` behind a random delay, no
 * transactions. Do not change it: the exercise is to be correct over it as it is.
 */
export class UserPointTable {
  private readonly table = new Map<number, UserPoint>();

  /**
   * `latencyMs`: the longest simulated delay of every call; by default the
   * template's (200 ms for `selectById`, 300 ms for `insertOrUpdate`).
   */
  constructor(private readonly latencyMs?: number) {}

  selectById(id: number): Promise<UserPoint> {
    this.isValidId(id);
    return afterLatency(this.latencyMs ?? 200, () => this.table.get(id) ?? { id, point: 0, updateMillis: Date.now() });
  }

  insertOrUpdate(id: number, amount: number): Promise<UserPoint> {
    this.isValidId(id);
    return afterLatency(this.latencyMs ?? 300, () => {
      const userPoint = { id, point: amount, updateMillis: Date.now() };
      this.table.set(id, userPoint);
      return userPoint;
    });
  }

  private isValidId(id: number): void {
    if (Number.isInteger(id) && id > 0) return;
    throw new Error('invalid id');
  }
}
