import { Injectable, PipeTransform } from '@nestjs/common';
import { ApiError } from './errors';

/**
 * A user id from the path: decimal digits (leading zeros allowed, at most 20),
 * a value in `1..=2^53-1` (JavaScript's safe integers; the Rust server takes
 * up to 2^63-1).
 */
export function parseUserId(raw: unknown): number {
  if (typeof raw === 'string' && /^[0-9]{1,20}$/.test(raw)) {
    const id = Number(raw);
    if (id >= 1 && Number.isSafeInteger(id)) return id;
  }
  throw new ApiError('INVALID_USER_ID', 'the user id must be a positive integer up to 9007199254740991');
}

/** `@Param('id', UserIdPipe) id: number`. */
@Injectable()
export class UserIdPipe implements PipeTransform<unknown, number> {
  transform(raw: unknown): number {
    return parseUserId(raw);
  }
}

/**
 * The amount of a charge or use from the raw body: `{"amount": n}` (NestJS
 * template) or a bare `n` (Spring template), `n` a JSON integer in
 * `1..=2^53-1` written without fraction or exponent. Not JSON (or empty):
 * `INVALID_JSON`; JSON without such an amount: `INVALID_AMOUNT`. With a repeated
 * `amount` field the last one counts, as in the Rust server.
 */
export function parseAmount(body: unknown): number {
  const text = typeof body === 'string' ? body : '';
  if (text.trim() === '') throw new ApiError('INVALID_JSON', 'the body is empty: send {"amount": 100} or 100');
  let value: unknown;
  let tagged: unknown;
  try {
    value = JSON.parse(text);
    tagged = JSON.parse(tagNumbers(text));
  } catch (error) {
    throw new ApiError('INVALID_JSON', `the body must be JSON like {"amount": 100} or a bare number: ${(error as Error).message}`);
  }
  const amount = topLevelAmount(value);
  // JSON.parse reads 1e3 and 1000.0 as 1000: the tagged copy keeps each
  // number's source text, so only plain integers pass.
  const source = typeof amount === 'number' ? topLevelAmount(tagged) : undefined;
  if (typeof source === 'string' && /^[1-9][0-9]*$/.test(source.slice(1)) && Number.isSafeInteger(amount)) {
    return amount as number;
  }
  throw new ApiError('INVALID_AMOUNT', 'the amount must be a positive integer up to 9007199254740991');
}

function topLevelAmount(value: unknown): unknown {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    return (value as Record<string, unknown>).amount;
  }
  return value;
}

/**
 * `text` (valid JSON) with every number outside strings replaced by a string
 * of `#` and its source text: `{"amount":1e3}` becomes `{"amount":"#1e3"}`.
 * Only read where the untagged parse found a number, so a client's own string
 * cannot pass for one.
 */
function tagNumbers(text: string): string {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
    } else if (c === '-' || (c >= '0' && c <= '9')) {
      let j = i + 1;
      while (j < text.length && /[0-9eE+\-.]/.test(text[j])) j += 1;
      out += `"#${text.slice(i, j)}"`;
      i = j;
    } else {
      out += c;
      i += 1;
    }
  }
  return out;
}

/** `@Body(AmountPipe) amount: number`, with the body read as text (main.ts). */
@Injectable()
export class AmountPipe implements PipeTransform<unknown, number> {
  transform(body: unknown): number {
    return parseAmount(body);
  }
}
