import { PointHistoryTable } from '../database/pointhistory.table';
import { UserPointTable } from '../database/userpoint.table';
import { ApiError } from './errors';
import { PointHistory, TransactionType, UserPoint, Wallet } from './point.model';

/**
 * The template's point service with the course's policy: read, check, write the
 * balance, append the history row. It has no lock of its own: correct only
 * under `UserLockInterceptor`, which runs one user's requests one at a time.
 * Provided by a factory (app.module.ts), hence no `@Injectable()`.
 */
export class TablePointService implements Wallet {
  constructor(
    private readonly userDb: UserPointTable,
    private readonly historyDb: PointHistoryTable,
    private readonly maxBalance: number,
  ) {}

  point(id: number): Promise<UserPoint> {
    return this.userDb.selectById(id);
  }

  async histories(id: number): Promise<PointHistory[]> {
    const rows = await this.historyDb.selectAllByUserId(id);
    return rows.map((row) => ({ ...row, type: TransactionType[row.type] as 'CHARGE' | 'USE' }));
  }

  async charge(id: number, amount: number): Promise<UserPoint> {
    const { point } = await this.userDb.selectById(id);
    if (point + amount > this.maxBalance) {
      throw new ApiError('MAX_BALANCE_EXCEEDED', `a balance of ${point} + ${amount} would exceed ${this.maxBalance}`);
    }
    return this.write(id, point + amount, amount, TransactionType.CHARGE);
  }

  async use(id: number, amount: number): Promise<UserPoint> {
    const { point } = await this.userDb.selectById(id);
    if (amount > point) throw new ApiError('INSUFFICIENT_BALANCE', `insufficient balance: ${point} < ${amount}`);
    return this.write(id, point - amount, amount, TransactionType.USE);
  }

  private async write(id: number, point: number, amount: number, type: TransactionType): Promise<UserPoint> {
    const updated = await this.userDb.insertOrUpdate(id, point);
    await this.historyDb.insert(id, amount, type, updated.updateMillis);
    return updated;
  }
}
