/**
 * The API's server below express: HTTP or HTTPS, its timeouts, and a JSON answer to requests
 * Node's HTTP parser refuses before express sees them.
 */
import type express from 'express';
import { STATUS_CODES, type Server as HttpServer } from 'node:http';
import https from 'node:https';
import { API_TLS, loadTlsFiles, type TlsFiles } from '../config/tls.js';

/** How long a connection refused by the HTTP parser is read (and discarded) after its answer. */
const LINGER_MS = 2000;

/** The answer to a request Node's HTTP parser refused, before express saw it. */
function parserRefusal(err: NodeJS.ErrnoException): { status: number; code: string; message: string } {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return {
        status: 431,
        code: 'HEADERS_TOO_LARGE',
        message: 'request headers are larger than the server accepts (16 KiB in all)',
      };
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return { status: 408, code: 'REQUEST_TIMEOUT', message: 'the request was not received in time' };
    default:
      return {
        status: 400,
        code: 'BAD_HTTP_REQUEST',
        message: `not a valid HTTP/1.1 request (${err.code ?? 'parse error'})`,
      };
  }
}

/**
 * A request the HTTP parser refuses (oversized headers, malformed request line, not HTTP at all)
 * still gets a JSON error envelope. Node's default answer closes the socket at once: with the
 * client still sending its body, the kernel then resets the connection and the client reads a
 * connection error instead of the answer. Here the answer is sent, the write side closed, and
 * what the client still sends is read and discarded for a short while (a "lingering close").
 */
function answerParserErrors(server: Server): void {
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const r = parserRefusal(err);
    const body = JSON.stringify({ error: { code: r.code, message: r.message } });
    socket.end(
      `HTTP/1.1 ${r.status} ${STATUS_CODES[r.status] ?? 'Error'}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
    socket.on('error', () => undefined);
    socket.resume();
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  });
}

/** The API's server: plain HTTP, or HTTPS with `api.tls`. */
export type Server = HttpServer | https.Server;

/**
 * Starts the API on the configured host/port, over HTTPS when `tls` names a certificate and key
 * (read once, here); resolves with the listening server.
 */
export function listen(
  app: express.Express,
  host: string,
  port: number,
  tls: Pick<TlsFiles, 'certFile' | 'keyFile'> = {},
): Promise<Server> {
  const pem = tls.certFile ? loadTlsFiles(tls, API_TLS) : null;
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    const onListening = (err?: Error): void => {
      server.off('error', onError);
      if (err) reject(err);
      else resolve(server);
    };
    const server: Server = pem
      ? https.createServer({ cert: pem.cert, key: pem.key }, app).listen(port, host, onListening)
      : app.listen(port, host, onListening);
    server.once('error', onError);
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    answerParserErrors(server);
  });
}
