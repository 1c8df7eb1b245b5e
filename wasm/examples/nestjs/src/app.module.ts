import { DynamicModule, Module } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { KeyedLock, PointService } from 'pointlock';
import { PointHistoryTable } from './database/pointhistory.table';
import { UserPointTable } from './database/userpoint.table';
import { HealthController } from './health.controller';
import { ExampleOptions } from './options';
import { JsonErrorFilter } from './point/errors';
import { MutexMap } from './point/mutex-map';
import { MethodNotAllowedController, PointController } from './point/point.controller';
import { WALLET, Wallet } from './point/point.model';
import { TablePointService } from './point/point.service';
import { USER_LOCK, UserLock } from './point/user-lock.interceptor';

/** No lock: `point-service` has its own inside; `off` is the tests' negative control. */
const PASS_THROUGH: UserLock = { withLock: async (_key, fn) => fn() };

function userLock(options: ExampleOptions): UserLock {
  switch (options.lock) {
    case 'keyed-lock':
      return new KeyedLock(options.lockTimeoutMs > 0 ? { timeoutMs: options.lockTimeoutMs } : {});
    case 'async-mutex':
      return new MutexMap();
    case 'point-service':
    case 'off':
      return PASS_THROUGH;
  }
}

function wallet(options: ExampleOptions, userPointTable: UserPointTable, pointHistoryTable: PointHistoryTable): Wallet {
  if (options.lock !== 'point-service') {
    return new TablePointService(userPointTable, pointHistoryTable, options.maxBalance);
  }
  return new PointService({
    userPointTable,
    pointHistoryTable,
    maxBalance: options.maxBalance,
    ...(options.lockTimeoutMs > 0 ? { lockTimeoutMs: options.lockTimeoutMs } : {}),
  });
}

@Module({})
export class AppModule {
  static forRoot(options: ExampleOptions): DynamicModule {
    return {
      module: AppModule,
      controllers: [HealthController, PointController, MethodNotAllowedController],
      providers: [
        { provide: UserPointTable, useValue: new UserPointTable(options.tableLatencyMs) },
        { provide: PointHistoryTable, useValue: new PointHistoryTable(options.tableLatencyMs) },
        { provide: USER_LOCK, useValue: userLock(options) },
        {
          provide: WALLET,
          useFactory: (points: UserPointTable, history: PointHistoryTable) => wallet(options, points, history),
          inject: [UserPointTable, PointHistoryTable],
        },
        { provide: APP_FILTER, useClass: JsonErrorFilter },
      ],
    };
  }
}
