import { randomBytes, webcrypto } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY = 86_400_000;

/** A certificate and its key, as PEM files. */
export interface PemPair {
  certFile: string;
  keyFile: string;
}

/** Certificates a test makes for itself: a CA, a server and a client certificate it signed, and an unrelated CA. */
export interface TestPki {
  dir: string;
  /** The CA certificate (PEM) that signed `server` and `client`. */
  caFile: string;
  /** A server certificate for 127.0.0.1, ::1 and localhost (also usable as a client: Redis Cluster's bus). */
  server: PemPair;
  /** A client certificate (CN fleet-test-client). */
  client: PemPair;
  /** Another CA, which signed nothing here: trusting it alone must fail every handshake. */
  otherCaFile: string;
  release(): void;
}

async function keyPair(): Promise<webcrypto.CryptoKeyPair> {
  const keys = await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
  if (!('privateKey' in keys)) throw new Error('WebCrypto made one key where ECDSA makes a pair');
  return keys;
}

async function pemKey(key: webcrypto.CryptoKey): Promise<string> {
  const b64 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key))
    .toString('base64')
    .replace(/.{64}/g, '$&\n');
  return `-----BEGIN PRIVATE KEY-----\n${b64.replace(/\n$/, '')}\n-----END PRIVATE KEY-----\n`;
}

async function selfSignedCa(name: string): Promise<{ cert: x509.X509Certificate; keys: webcrypto.CryptoKeyPair }> {
  const keys = await keyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(8).toString('hex'),
    name: `CN=${name}`,
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + 2 * DAY),
    signingAlgorithm: ALG,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, keys };
}

async function leaf(
  ca: { cert: x509.X509Certificate; keys: webcrypto.CryptoKeyPair },
  subject: string,
  usages: x509.ExtendedKeyUsage[],
  names: { type: 'ip' | 'dns'; value: string }[],
): Promise<{ cert: string; key: string }> {
  const keys = await keyPair();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomBytes(8).toString('hex'),
    subject: `CN=${subject}`,
    issuer: ca.cert.subject,
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + 2 * DAY),
    signingAlgorithm: ALG,
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    extensions: [
      ...(names.length ? [new x509.SubjectAlternativeNameExtension(names)] : []),
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(usages),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert),
    ],
  });
  return { cert: cert.toString('pem'), key: await pemKey(keys.privateKey) };
}

/** Makes a CA, a server and a client certificate, and an unrelated CA, as PEM files in a temp dir. */
export async function makeTestPki(): Promise<TestPki> {
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-pki-'));
  const write = (name: string, text: string): string => {
    const file = path.join(dir, name);
    writeFileSync(file, text, { mode: 0o600 });
    return file;
  };
  const ca = await selfSignedCa('fleet test CA');
  const other = await selfSignedCa('some other CA');
  const server = await leaf(
    ca,
    'localhost',
    [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
    [
      { type: 'ip', value: '127.0.0.1' },
      { type: 'ip', value: '::1' },
      { type: 'dns', value: 'localhost' },
    ],
  );
  const client = await leaf(ca, 'fleet-test-client', [x509.ExtendedKeyUsage.clientAuth], []);
  return {
    dir,
    caFile: write('ca.pem', ca.cert.toString('pem')),
    server: { certFile: write('server.pem', server.cert), keyFile: write('server.key', server.key) },
    client: { certFile: write('client.pem', client.cert), keyFile: write('client.key', client.key) },
    otherCaFile: write('other-ca.pem', other.cert.toString('pem')),
    release: () => rmSync(dir, { recursive: true, force: true }),
  };
}
