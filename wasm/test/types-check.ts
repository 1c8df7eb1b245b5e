// Compiled with `tsc --noEmit --strict` in CI: the package's declarations are valid
// TypeScript and describe the API as documented.
import { PointService, KeyedLock, UserPoint, PointHistory, PointlockError } from '../pkg';

async function demo(): Promise<void> {
  const svc = new PointService({ maxBalance: 10000, lockTimeoutMs: 3000 });
  const memory = new PointService({ idempotencyTtlMs: 60_000 });
  const once: UserPoint = await memory.charge(1, 100, 'order-1');
  const swept: number = await memory.sweepIdempotencyKeys(100) + memory.idempotentReplays;
  void once;
  void swept;
  const p: UserPoint = await svc.charge(1, 100);
  const u: UserPoint = await svc.use(1, 40);
  const h: PointHistory[] = await memory.histories(1);
  const kind: 'CHARGE' | 'USE' | undefined = h[0]?.type;
  const lock = new KeyedLock({ timeoutMs: 100 });
  const n: number = lock.size + svc.lockedUsers + p.point + u.updateMillis;
  await lock.withLock('k', async () => n);
  const typed: number = await lock.withLock(1, async () => n); // Promise<T> of the function's T
  const plain: string = await lock.withLock(2, () => 'sync');
  void typed;
  void plain;
  try {
    await svc.use(2, 1);
  } catch (e) {
    const code: string = (e as PointlockError).code;
    void code;
  }
  void kind;
}
void demo;
