// Throwaway development certificates for `bun run cluster --tls` and the TLS tests: one CA and, per
// node, a certificate for localhost/127.0.0.1 that is both a server and a peer-client certificate
// naming the node (SAN URI kvraft://node/<id>). ECDSA P-256, made with @peculiar/x509 on WebCrypto.

// @peculiar/x509 resolves its algorithms through tsyringe, which needs the Reflect metadata API.
import "reflect-metadata";
import * as fs from "node:fs";
import * as path from "node:path";
import * as x509 from "@peculiar/x509";

const ALGORITHM = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
const DAY_MS = 24 * 60 * 60 * 1000;

export interface DevCertFiles {
  ca: string;
  /** Per node id: certificate and key files. */
  nodes: { cert: string; key: string }[];
  /** A client certificate (for --client-cert-auth tests and kvclient --cert/--key). */
  client: { cert: string; key: string };
}

async function pemKey(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey("pkcs8", key);
  return x509.PemConverter.encode(der, "PRIVATE KEY");
}

function serial(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(8))).toString("hex").replace(/^[89a-f]/, "1");
}

/**
 * Writes ca.crt, node-<i>.crt/.key for `nodes` nodes and client.crt/.key into `dir` (created),
 * valid from an hour ago for `days` days. The CA's private key is not kept: nothing else can be signed.
 */
export async function makeDevCertificates(dir: string, nodes: number, options: { days?: number; commonName?: string } = {}): Promise<DevCertFiles> {
  x509.cryptoProvider.set(crypto);
  fs.mkdirSync(dir, { recursive: true });
  const notBefore = new Date(Date.now() - 60 * 60 * 1000);
  const notAfter = new Date(Date.now() + (options.days ?? 30) * DAY_MS);
  const caKeys = (await crypto.subtle.generateKey(ALGORITHM, true, ["sign", "verify"])) as CryptoKeyPair;
  const caName = `CN=${options.commonName ?? "kvraft development CA"}`;
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: caName,
    notBefore,
    notAfter,
    keys: caKeys,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  const files: DevCertFiles = { ca: path.join(dir, "ca.crt"), nodes: [], client: { cert: path.join(dir, "client.crt"), key: path.join(dir, "client.key") } };
  fs.writeFileSync(files.ca, ca.toString("pem") + "\n");

  const issue = async (commonName: string, names: x509.JsonGeneralNames, usages: string[], certFile: string, keyFile: string) => {
    const keys = (await crypto.subtle.generateKey(ALGORITHM, true, ["sign", "verify"])) as CryptoKeyPair;
    const certificate = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject: `CN=${commonName}`,
      issuer: ca.subject,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: caKeys.privateKey,
      signingAlgorithm: ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        new x509.ExtendedKeyUsageExtension(usages),
        ...(names.length > 0 ? [new x509.SubjectAlternativeNameExtension(names)] : []),
        await x509.AuthorityKeyIdentifierExtension.create(ca),
      ],
    });
    fs.writeFileSync(certFile, certificate.toString("pem") + "\n");
    fs.writeFileSync(keyFile, await pemKey(keys.privateKey), { mode: 0o600 });
  };

  for (let id = 0; id < nodes; id++) {
    const cert = path.join(dir, `node-${id}.crt`);
    const key = path.join(dir, `node-${id}.key`);
    await issue(
      `kvraft node ${id}`,
      [
        { type: "dns", value: "localhost" },
        { type: "ip", value: "127.0.0.1" },
        { type: "ip", value: "::1" },
        { type: "url", value: `kvraft://node/${id}` },
      ],
      [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
      cert,
      key,
    );
    files.nodes.push({ cert, key });
  }
  await issue("kvraft client", [], [x509.ExtendedKeyUsage.clientAuth], files.client.cert, files.client.key);
  return files;
}
