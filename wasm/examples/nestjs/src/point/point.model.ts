// The course template's models: a balance, a history row, the numeric enum.

export interface UserPoint {
  id: number;
  point: number;
  updateMillis: number;
}

export enum TransactionType {
  CHARGE,
  USE,
}

/** A row of the template's `PointHistoryTable` (`type` is the enum). */
export interface PointHistoryRow {
  id: number;
  userId: number;
  type: TransactionType;
  amount: number;
  timeMillis: number;
}

/** A history row as the HTTP API answers it: `type` is `"CHARGE"` or `"USE"`. */
export interface PointHistory {
  id: number;
  userId: number;
  type: 'CHARGE' | 'USE';
  amount: number;
  timeMillis: number;
}

/**
 * What the controller needs from a wallet. The app's `TablePointService` (the
 * template's service, run under the interceptor's lock) and pointlock's
 * `PointService` (its own lock inside) both have this shape.
 */
export interface Wallet {
  point(id: number): Promise<UserPoint>;
  histories(id: number): Promise<PointHistory[]>;
  charge(id: number, amount: number): Promise<UserPoint>;
  use(id: number, amount: number): Promise<UserPoint>;
}

/** The DI token of the `Wallet` the controller uses. */
export const WALLET = Symbol('WALLET');
