'use strict';
// protocol.md §1 and §6.6: who is on the other end. Certificates chain to the pinned CA only.
const { X509Certificate } = require('node:crypto');

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

class PeerRejected extends Error {}

function certificate(der) {
  try {
    return new X509Certificate(der);
  } catch {
    throw new PeerRejected("the peer's certificate does not parse");
  }
}

// Lowercase hex without leading zeros (protocol.md conventions).
function serialOf(cert) {
  return BigInt('0x' + cert.serialNumber).toString(16);
}

function chainsTo(leaf, ca, at) {
  if (!leaf.checkIssued(ca) || !leaf.verify(ca.publicKey)) throw new PeerRejected('not issued by the pinned CA');
  if (!(new Date(leaf.validFrom) <= at && at < new Date(leaf.validTo))) {
    throw new PeerRejected(`certificate ${serialOf(leaf)} is not valid at ${at.toISOString()}`);
  }
}

function uriSans(cert) {
  return (cert.subjectAltName || '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
}

// An agent of the CA's trust domain (named expected, if given), valid at `at`: returns its name and serial.
function checkAgent(chain, ca, trustDomain, expected, at) {
  if (chain.length < 1 || chain.length > 4) throw new PeerRejected('bad chain length');
  const leaf = certificate(chain[0]);
  chainsTo(leaf, ca, at);
  if (!(leaf.keyUsage || []).includes(CLIENT_AUTH)) throw new PeerRejected('not a client certificate');
  const uris = uriSans(leaf);
  const prefix = `spiffe://${trustDomain}/agent/`;
  if (uris.length !== 1 || !uris[0].startsWith(prefix)) throw new PeerRejected('not an agent of this trust domain');
  const name = uris[0].slice(prefix.length);
  if (!/^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/.test(name) || name === 'server') throw new PeerRejected('bad agent name');
  if (expected && name !== expected) throw new PeerRejected(`the peer is ${name}, not ${expected}`);
  if (leaf.publicKey.asymmetricKeyType !== 'rsa') throw new PeerRejected("the agent's key is not RSA");
  return { name, serial: serialOf(leaf), publicKey: leaf.publicKey };
}

// The kms-server: a serverAuth certificate of the CA for the host dialled, valid at `at`.
function checkServer(chain, ca, host, at) {
  if (chain.length < 1 || chain.length > 4) throw new PeerRejected('bad chain length');
  const leaf = certificate(chain[0]);
  chainsTo(leaf, ca, at);
  if (!(leaf.keyUsage || []).includes(SERVER_AUTH)) throw new PeerRejected('not a server certificate');
  const ip = /^[0-9.]+$|:/.test(host);
  if (!(ip ? leaf.checkIP(host) : leaf.checkHost(host))) throw new PeerRejected(`not a certificate for ${host}`);
  return { name: 'server', serial: serialOf(leaf), publicKey: leaf.publicKey };
}

function trustDomainOf(spiffeId) {
  const m = /^spiffe:\/\/([^/]+)\/agent\/[^/]+$/.exec(spiffeId);
  if (!m) throw new Error(`not an agent SPIFFE ID: ${spiffeId}`);
  return m[1];
}

module.exports = { PeerRejected, certificate, serialOf, checkAgent, checkServer, trustDomainOf };
