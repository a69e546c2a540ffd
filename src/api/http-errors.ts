/**
 * How the API answers an error: `{ error: { code, message, details? } }` with the status its code
 * maps to, from a FleetError, body-parser's refusals, or anything unexpected (500, logged).
 */
import type { ErrorRequestHandler, Response } from 'express';
import { FleetError, fieldOf, toError, type ErrorCode } from '../errors.js';
import type { Logger } from '../observability/logger.js';

/** The HTTP status of each error code the API answers with; any other code is a 500. */
const STATUS: Partial<Record<ErrorCode | 'JOB_FINISHED', number>> = {
  INVALID_JSON: 400,
  INVALID_REQUEST: 400,
  PAYLOAD_TOO_DEEP: 400,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  UNKNOWN_JOB_TYPE: 404,
  JOB_NOT_FOUND: 404,
  JOB_FINISHED: 409,
  IDEMPOTENCY_KEY_IN_FLIGHT: 409,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  INVALID_PAYLOAD: 422,
  IDEMPOTENCY_KEY_REUSED: 422,
  REDIS_UNAVAILABLE: 503,
  DATA_KEY_UNAVAILABLE: 503,
  TLS_REFUSED: 503,
  REDIS_FULL: 507,
};

/**
 * What a client is told of a failure on the server's side: the code, and that the request was not
 * carried out. The full message (addresses, ACL replies, which setting to fix) is for operators:
 * it goes to the log, never to the client. A 507's message is the client's to act on (it names
 * what frees space), so it is sent as it is.
 */
const PUBLIC: Partial<Record<ErrorCode, string>> = {
  REDIS_UNAVAILABLE: 'the job store is unavailable; the request was not carried out. Retry later.',
  TLS_REFUSED: "the job store refused the server's connection; the request was not carried out. Retry later.",
  DATA_KEY_UNAVAILABLE: "the job type's data key is unavailable; the request was not carried out. Retry later.",
};

interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

/** Writes the error envelope (with the Bearer challenge on a 401). */
export function send(
  res: Response,
  status: number,
  code: string,
  message: string,
  details?: Record<string, unknown>,
): void {
  const body: ErrorBody = { error: { code, message, ...(details ? { details } : {}) } };
  if (status === 401) res.setHeader('WWW-Authenticate', 'Bearer realm="fleet"');
  res.status(status).json(body);
}

/** Shortens anything user-supplied before it is echoed in an error. */
export const shown = (s: string): string => JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s);

/** The last handler of the app: every error thrown by a route or middleware becomes the envelope. */
export function errorHandler(log: Logger, bodyLimitBytes: number): ErrorRequestHandler {
  return (err: unknown, req, res, _next) => {
    // body-parser's errors carry `type` and `status`.
    const type = fieldOf(err, 'type');
    const status = fieldOf(err, 'status');
    const message = toError(err).message;
    if (type === 'entity.parse.failed') return send(res, 400, 'INVALID_JSON', `body is not valid JSON: ${message}`);
    if (type === 'entity.too.large')
      return send(res, 413, 'PAYLOAD_TOO_LARGE', `body is larger than api.bodyLimitBytes=${bodyLimitBytes}`);
    if (type === 'encoding.unsupported' || type === 'charset.unsupported')
      return send(res, 415, 'UNSUPPORTED_MEDIA_TYPE', message);
    if (err instanceof FleetError) {
      const status = STATUS[err.code] ?? 500;
      if (status >= 500)
        log.error('request failed', { code: err.code, error: err.message, method: req.method, path: req.path });
      if (status === 503) res.setHeader('Retry-After', '1');
      const shownMessage = status === 500 ? 'internal error; see the server log' : (PUBLIC[err.code] ?? err.message);
      return send(res, status, err.code, shownMessage, status >= 500 && status !== 507 ? undefined : err.details);
    }
    if (typeof status === 'number' && status >= 400 && status < 500)
      return send(res, status, 'INVALID_REQUEST', message);
    log.error('unexpected error', {
      error: toError(err).message,
      stack: toError(err).stack,
      method: req.method,
      path: req.path,
    });
    send(res, 500, 'INTERNAL', 'internal error; see the server log');
  };
}
