import { ArgumentsHost, Catch, ExceptionFilter, HttpException, Logger, NotFoundException } from '@nestjs/common';

/**
 * The HTTP status of every error code, the Rust server's (README.md, "Errors").
 * The only place where a code becomes a status.
 */
const STATUS_OF_CODE: Record<string, number> = {
  INVALID_USER_ID: 400,
  INVALID_AMOUNT: 400,
  INVALID_JSON: 400,
  BAD_BODY: 400,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  INSUFFICIENT_BALANCE: 409,
  MAX_BALANCE_EXCEEDED: 409,
  PAYLOAD_TOO_LARGE: 413,
  STORE_ERROR: 500,
  INTERNAL: 500,
  LOCK_TIMEOUT: 503,
  WRITE_CONFLICT: 503,
};

/** Codes a client may retry after a moment: answered with `Retry-After: 1`. */
const RETRY_LATER = new Set(['LOCK_TIMEOUT', 'WRITE_CONFLICT']);

/**
 * An error with a stable code, as pointlock's own rejections are (`error.code`).
 * `headers` go on the answer (`Allow` for a 405).
 */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

interface Answer {
  status: number;
  code: string;
  message: string;
  headers: Record<string, string>;
}

interface ResponseLike {
  status(code: number): ResponseLike;
  setHeader(name: string, value: string): void;
  json(body: unknown): void;
}

/**
 * Every error becomes `{"code":"…","message":"…"}` with its status: the app's
 * and pointlock's coded errors, the body parser's (too large, unreadable), and
 * Nest's own 404 for an unknown route. Anything else is a 500 `INTERNAL`,
 * logged.
 */
@Catch()
export class JsonErrorFilter implements ExceptionFilter {
  private readonly logger = new Logger('JsonErrorFilter');

  catch(exception: unknown, host: ArgumentsHost): void {
    const answer = this.answer(exception);
    const response = host.switchToHttp().getResponse<ResponseLike>();
    for (const [name, value] of Object.entries(answer.headers)) response.setHeader(name, value);
    response.status(answer.status).json({ code: answer.code, message: answer.message });
  }

  private answer(exception: unknown): Answer {
    const { code, message, type, headers } = (exception ?? {}) as {
      code?: unknown;
      message?: unknown;
      type?: unknown;
      headers?: Record<string, string>;
    };
    const text = typeof message === 'string' ? message : String(exception);
    if (typeof code === 'string' && code in STATUS_OF_CODE) {
      const retry: Record<string, string> = RETRY_LATER.has(code) ? { 'Retry-After': '1' } : {};
      return { status: STATUS_OF_CODE[code], code, message: text, headers: { ...retry, ...(headers ?? {}) } };
    }
    // body-parser's errors carry a `type` (https://github.com/expressjs/body-parser#errors).
    if (type === 'entity.too.large') return { status: 413, code: 'PAYLOAD_TOO_LARGE', message: text, headers: {} };
    if (typeof type === 'string') return { status: 400, code: 'BAD_BODY', message: text, headers: {} };
    if (exception instanceof NotFoundException) return { status: 404, code: 'NOT_FOUND', message: text, headers: {} };
    if (exception instanceof HttpException && exception.getStatus() < 500) {
      return { status: exception.getStatus(), code: 'HTTP_' + exception.getStatus(), message: text, headers: {} };
    }
    this.logger.error(exception instanceof Error ? exception.stack : text);
    return { status: 500, code: 'INTERNAL', message: 'internal server error (details in the log)', headers: {} };
  }
}
