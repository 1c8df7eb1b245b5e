/**
 * How the example runs: which per-user lock, how slow the tables are, the
 * bounds. `npm start` reads them from the environment (`optionsFromEnv`).
 */
export interface ExampleOptions {
  /**
   * - `keyed-lock` (default): the template's service under `UserLockInterceptor`
   *   with pointlock's `KeyedLock`.
   * - `point-service`: pointlock's `PointService` over the template's tables (the
   *   lock is inside it; the interceptor passes requests through).
   * - `async-mutex`: the template's service under the same interceptor with a
   *   hand-written `Map` of async-mutex mutexes (`MutexMap`), the baseline of
   *   bench/compare.sh.
   * - `off`: no lock at all, so concurrent changes of a user lose updates: the
   *   tests' negative control. The environment cannot select it; only code
   *   calling `bootstrap` (test/serve.js) can.
   */
  lock: 'keyed-lock' | 'point-service' | 'async-mutex' | 'off';
  /** The longest simulated delay of a table call; `undefined`: the template's (200 and 300 ms). */
  tableLatencyMs?: number;
  /** The longest wait for a user's earlier requests, then 503 LOCK_TIMEOUT; 0: unbounded. */
  lockTimeoutMs: number;
  /** The largest balance (inclusive). */
  maxBalance: number;
  /** The largest request body, then 413 PAYLOAD_TOO_LARGE. */
  bodyLimitBytes: number;
  host: string;
  /** 0: any free port (the app prints the one it got). */
  port: number;
}

export const DEFAULTS: ExampleOptions = {
  lock: 'keyed-lock',
  tableLatencyMs: undefined,
  lockTimeoutMs: 30000,
  maxBalance: 10000,
  bodyLimitBytes: 4096,
  host: '127.0.0.1',
  port: 3000,
};

const LOCKS_FROM_ENV = ['keyed-lock', 'point-service', 'async-mutex'] as const;

/**
 * `PORT`, `HOST`, `POINT_LOCK` (`keyed-lock`, `point-service`, `async-mutex`),
 * `TABLE_LATENCY_MS`, `LOCK_TIMEOUT_MS`, `MAX_BALANCE`, `BODY_LIMIT_BYTES`;
 * unset ones take `DEFAULTS`. A malformed value throws (the app does not start).
 */
export function optionsFromEnv(env: NodeJS.ProcessEnv): ExampleOptions {
  const integer = (name: string, fallback: number | undefined, min: number): number | undefined => {
    const raw = env[name];
    if (raw === undefined || raw === '') return fallback;
    const value = Number(raw);
    if (!/^[0-9]+$/.test(raw) || !Number.isSafeInteger(value) || value < min) {
      throw new Error(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
    }
    return value;
  };
  const lock = env.POINT_LOCK ?? DEFAULTS.lock;
  if (!(LOCKS_FROM_ENV as readonly string[]).includes(lock)) {
    throw new Error(`POINT_LOCK must be one of ${LOCKS_FROM_ENV.join(', ')}, got ${JSON.stringify(lock)}`);
  }
  return {
    lock: lock as ExampleOptions['lock'],
    tableLatencyMs: integer('TABLE_LATENCY_MS', DEFAULTS.tableLatencyMs, 0),
    lockTimeoutMs: integer('LOCK_TIMEOUT_MS', DEFAULTS.lockTimeoutMs, 0)!,
    maxBalance: integer('MAX_BALANCE', DEFAULTS.maxBalance, 1)!,
    bodyLimitBytes: integer('BODY_LIMIT_BYTES', DEFAULTS.bodyLimitBytes, 1)!,
    host: env.HOST || DEFAULTS.host,
    port: integer('PORT', DEFAULTS.port, 0)!,
  };
}
