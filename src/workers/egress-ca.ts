/**
 * The fleet's egress CA: the egress proxy terminates a sandbox's TLS with a certificate for the
 * requested host, signed by this CA, so it can swap secret placeholders in the request. Sandboxes
 * of types with injected secrets trust it (NODE_EXTRA_CA_CERTS, the certificate only); nothing
 * else does. The key is generated per data dir (mode 0600 under dataDir, which no sandbox can
 * read) and never leaves the supervisor.
 */
import { randomBytes, webcrypto } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
// @peculiar/x509 needs the Reflect metadata API (its DI container); loaded only where this module is.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

// Node's webcrypto is the Web Crypto API; its TypeScript types differ from the DOM's that x509 names.
// eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- see the line above
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

async function newKeyPair(): Promise<CryptoKeyPair> {
  const keys = await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
  if (!('privateKey' in keys)) throw new Error('WebCrypto made one key where ECDSA makes a pair');
  return keys;
}
const DAY = 86_400_000;

function pemKey(der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN PRIVATE KEY-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END PRIVATE KEY-----\n`;
}

function derOf(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

export class EgressCa {
  readonly certPem: string;
  /** The certificate file sandboxes are given (public). */
  readonly certFile: string;
  readonly #cert: x509.X509Certificate;
  readonly #key: CryptoKey;
  /** One key pair for every leaf (only the certificates differ by host). */
  #leafKeys: Promise<{ keys: CryptoKeyPair; pem: string }> | null = null;
  readonly #contexts = new Map<string, Promise<tls.SecureContext>>();

  private constructor(certPem: string, certFile: string, key: CryptoKey) {
    this.certPem = certPem;
    this.certFile = certFile;
    this.#cert = new x509.X509Certificate(certPem);
    this.#key = key;
  }

  /** Loads the CA of this data dir, creating it on first use. */
  static async load(dir: string): Promise<EgressCa> {
    const certFile = path.join(dir, 'ca.pem');
    const keyFile = path.join(dir, 'ca.key');
    if (!existsSync(certFile) || !existsSync(keyFile)) {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      chmodSync(dir, 0o700);
      const keys = await newKeyPair();
      const now = Date.now();
      const cert = await x509.X509CertificateGenerator.createSelfSigned({
        serialNumber: randomBytes(8).toString('hex'),
        name: `CN=fleet egress CA ${randomBytes(4).toString('hex')}, O=fleet`,
        notBefore: new Date(now - DAY),
        notAfter: new Date(now + 3650 * DAY),
        signingAlgorithm: ALG,
        keys,
        extensions: [
          new x509.BasicConstraintsExtension(true, 0, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        ],
      });
      writeFileSync(keyFile, pemKey(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)), { mode: 0o600 });
      writeFileSync(certFile, cert.toString('pem'), { mode: 0o644 });
    }
    const certPem = readFileSync(certFile, 'utf8');
    const key = await webcrypto.subtle.importKey('pkcs8', derOf(readFileSync(keyFile, 'utf8')), ALG, false, ['sign']);
    return new EgressCa(certPem, certFile, key);
  }

  /** A TLS context presenting a certificate for `host`, signed by this CA (cached per host). */
  contextFor(host: string): Promise<tls.SecureContext> {
    let ctx = this.#contexts.get(host);
    if (!ctx) {
      ctx = this.#issue(host);
      this.#contexts.set(host, ctx);
      ctx.catch(() => this.#contexts.delete(host));
    }
    return ctx;
  }

  /** A certificate for `host` and its key, as PEM (tests stand up HTTPS servers of their own CA with it). */
  async leafPem(host: string): Promise<{ key: string; cert: string }> {
    const leaf = await this.#leaf(host);
    return { key: leaf.key, cert: leaf.cert };
  }

  async #issue(host: string): Promise<tls.SecureContext> {
    return tls.createSecureContext(await this.#leaf(host));
  }

  async #leaf(host: string): Promise<{ key: string; cert: string }> {
    this.#leafKeys ??= (async () => {
      const keys = await newKeyPair();
      return { keys, pem: pemKey(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)) };
    })();
    const leaf = await this.#leafKeys;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomBytes(8).toString('hex'),
      subject: `CN=${host}`,
      issuer: this.#cert.subject,
      notBefore: new Date(now - DAY),
      notAfter: new Date(now + 30 * DAY),
      signingAlgorithm: ALG,
      publicKey: leaf.keys.publicKey,
      signingKey: this.#key,
      extensions: [
        new x509.SubjectAlternativeNameExtension([{ type: isIP(host) ? 'ip' : 'dns', value: host }]),
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        await x509.AuthorityKeyIdentifierExtension.create(this.#cert),
      ],
    });
    return { key: leaf.pem, cert: `${cert.toString('pem')}\n${this.certPem}` };
  }
}
