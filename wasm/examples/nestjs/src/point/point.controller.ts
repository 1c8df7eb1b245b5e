import { All, Body, Controller, Get, Inject, Param, Patch, UseInterceptors } from '@nestjs/common';
import { ApiError } from './errors';
import { AmountPipe, UserIdPipe } from './input';
import { PointHistory, UserPoint, WALLET, Wallet } from './point.model';
import { UserLockInterceptor } from './user-lock.interceptor';

/** The course's four routes. */
@Controller('point')
@UseInterceptors(UserLockInterceptor)
export class PointController {
  constructor(@Inject(WALLET) private readonly wallet: Wallet) {}

  @Get(':id')
  point(@Param('id', UserIdPipe) id: number): Promise<UserPoint> {
    return this.wallet.point(id);
  }

  @Get(':id/histories')
  history(@Param('id', UserIdPipe) id: number): Promise<PointHistory[]> {
    return this.wallet.histories(id);
  }

  @Patch(':id/charge')
  charge(@Param('id', UserIdPipe) id: number, @Body(AmountPipe) amount: number): Promise<UserPoint> {
    return this.wallet.charge(id, amount);
  }

  @Patch(':id/use')
  use(@Param('id', UserIdPipe) id: number, @Body(AmountPipe) amount: number): Promise<UserPoint> {
    return this.wallet.use(id, amount);
  }
}

function notAllowed(allow: string): never {
  throw new ApiError('METHOD_NOT_ALLOWED', `this route takes ${allow} only`, { Allow: allow });
}

/**
 * The same paths with any other method: 405 with `Allow` (Nest alone answers
 * 404). Registered after `PointController`, so its routes match first.
 */
@Controller('point')
export class MethodNotAllowedController {
  @All(':id')
  point(): never {
    return notAllowed('GET');
  }

  @All(':id/histories')
  history(): never {
    return notAllowed('GET');
  }

  @All(':id/charge')
  charge(): never {
    return notAllowed('PATCH');
  }

  @All(':id/use')
  use(): never {
    return notAllowed('PATCH');
  }
}
