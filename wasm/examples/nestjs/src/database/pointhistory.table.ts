import { PointHistoryRow, TransactionType } from '../point/point.model';
import { afterLatency } from './latency';

/**
 * The course template's `PointHistoryTable`: an array behind a random delay, ids
 * from a cursor. Do not change it.
 */
export class PointHistoryTable {
  private readonly table: PointHistoryRow[] = [];
  private cursor = 1;

  /** `latencyMs`: the longest simulated delay of every call; by default the template's, 300 ms. */
  constructor(private readonly latencyMs = 300) {}

  insert(userId: number, amount: number, transactionType: TransactionType, updateMillis: number): Promise<PointHistoryRow> {
    return afterLatency(this.latencyMs, () => {
      const history = { id: this.cursor++, userId, amount, type: transactionType, timeMillis: updateMillis };
      this.table.push(history);
      return history;
    });
  }

  selectAllByUserId(userId: number): Promise<PointHistoryRow[]> {
    return afterLatency(this.latencyMs, () => this.table.filter((row) => row.userId === userId));
  }
}
