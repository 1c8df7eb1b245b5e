import { CallHandler, ExecutionContext, Inject, Injectable, NestInterceptor } from '@nestjs/common';
import type { KeyedLock } from 'pointlock';
import { from, lastValueFrom, Observable } from 'rxjs';
import { parseUserId } from './input';

/** The DI token of the per-user lock: `new KeyedLock({ timeoutMs })` from pointlock. */
export const USER_LOCK = Symbol('USER_LOCK');
export type UserLock = Pick<KeyedLock, 'withLock'>;

/**
 * Runs the requests of one user (`:id` in the path) one at a time, in the order
 * they reach it; different users never wait for each other. A request takes its
 * place in its user's queue here, and leaves it when its handler has answered
 * or thrown. An invalid id is refused before any lock (400 INVALID_USER_ID).
 */
@Injectable()
export class UserLockInterceptor implements NestInterceptor {
  constructor(@Inject(USER_LOCK) private readonly lock: UserLock) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const userId = parseUserId(context.switchToHttp().getRequest<{ params: { id?: string } }>().params.id);
    return from(this.lock.withLock(userId, () => lastValueFrom(next.handle())));
  }
}
