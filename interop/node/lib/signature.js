'use strict';
// protocol.md §5: detached signatures by an agent's certificate (seed-kms-signature-v1).
const crypto = require('node:crypto');
const { u32, i64 } = require('./encoding');
const { certificate, checkAgent } = require('./certs');
const signing = require('./signing');

class SignatureError extends Error {}

function parseSignature(text) {
  if (text.length > 64 * 1024) throw new SignatureError('over 64 KiB');
  const doc = JSON.parse(text);
  if (doc === null || typeof doc !== 'object' || doc.format !== 'seed-kms-signature-v1') {
    throw new SignatureError('not a seed-kms-signature-v1 file');
  }
  const m = /^sha256:([0-9a-f]{64})$/.exec(doc.digest);
  if (!Number.isInteger(doc.signed_at) || doc.signed_at <= 0 || doc.signed_at >= 2 ** 40 || !m) {
    throw new SignatureError('bad signed_at or digest');
  }
  if (!Array.isArray(doc.signer_chain) || doc.signer_chain.length < 1) throw new SignatureError('no signer_chain');
  const chain = doc.signer_chain.map((pem) => certificate(pem).raw);
  return { signedAt: doc.signed_at, digest: Buffer.from(m[1], 'hex'), chain, signature: Buffer.from(doc.signature, 'base64') };
}

const statement = (digest, signedAt) => Buffer.concat([u32(digest.length), digest, i64(signedAt)]);

// Returns the signer ({name, serial}); throws unless every check of §5 holds.
// isRevoked(serial) -> Promise<boolean>: the signer's standing now.
async function verifyFile(sig, content, { ca, trustDomain, signer, isRevoked, now }) {
  const digest = crypto.createHash('sha256').update(content).digest();
  if (!digest.equals(sig.digest)) throw new SignatureError('the signature is for different contents');
  if (sig.signedAt > now + 300) throw new SignatureError('the signature claims to be made in the future');
  const peer = checkAgent(sig.chain, ca, trustDomain, signer, new Date(sig.signedAt * 1000));
  if (await isRevoked(peer.serial)) throw new SignatureError(`the signer's certificate ${peer.serial} is revoked`);
  if (!signing.verify(peer.publicKey, sig.signature, 'seed-kms file signature v1', statement(sig.digest, sig.signedAt))) {
    throw new SignatureError("the signature does not verify with the signer's certificate");
  }
  return { name: peer.name, serial: peer.serial };
}

const KEY_TYPES = ['rsa-2048', 'rsa-3072', 'rsa-4096', 'ec-p256'];

// The key-pair format: {format: "seed-kms-key-signature-v1", key, version, key_type, digest, signature}.
function parseKeySignature(text) {
  if (text.length > 64 * 1024) throw new SignatureError('over 64 KiB');
  const doc = JSON.parse(text);
  if (doc === null || typeof doc !== 'object' || doc.format !== 'seed-kms-key-signature-v1') {
    throw new SignatureError('not a seed-kms-key-signature-v1 file');
  }
  const m = /^sha256:([0-9a-f]{64})$/.exec(doc.digest);
  if (!Number.isInteger(doc.version) || doc.version < 1 || doc.version >= 2 ** 31 || !m || typeof doc.key !== 'string') {
    throw new SignatureError('bad key, version or digest');
  }
  return { key: doc.key, version: doc.version, keyType: doc.key_type, digest: Buffer.from(m[1], 'hex'), signature: Buffer.from(doc.signature, 'base64') };
}

// publicKey: the version's SubjectPublicKeyInfo DER, keyType and state as Keys/GetPublicKey gave them.
function verifyKeyFile(sig, content, { publicKey, keyType, state }) {
  if (state === 'compromised') throw new SignatureError(`version ${sig.version} of key ${sig.key} is compromised`);
  const digest = crypto.createHash('sha256').update(content).digest();
  if (!digest.equals(sig.digest)) throw new SignatureError('the signature is for different contents');
  if (!KEY_TYPES.includes(keyType) || keyType !== sig.keyType) throw new SignatureError("the key's type differs");
  const key = crypto.createPublicKey({ key: publicKey, format: 'der', type: 'spki' });
  // Over the file's SHA-256 as it is, no context string: a plain SHA-256 signature of the file.
  const options = key.asymmetricKeyType === 'rsa'
    ? { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }
    : { key, dsaEncoding: 'der' };
  if (!crypto.verify('sha256', content, options, sig.signature)) {
    throw new SignatureError(`the signature does not verify with version ${sig.version} of key ${sig.key}`);
  }
}

module.exports = { SignatureError, parseSignature, parseKeySignature, statement, verifyFile, verifyKeyFile };
