'use strict';
// RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) or ECDSA-SHA256 (DER), over context || 0x00 || message.
const crypto = require('node:crypto');

function options(key) {
  const k = key.asymmetricKeyType ? key : crypto.createPublicKey(key);
  if (k.asymmetricKeyType === 'rsa') {
    return { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 };
  }
  if (k.asymmetricKeyType === 'ec') return { key, dsaEncoding: 'der' };
  throw new Error(`unsupported key type ${k.asymmetricKeyType}`);
}

function withContext(context, message) {
  return Buffer.concat([Buffer.from(context, 'utf8'), Buffer.from([0]), message]);
}

function sign(privateKey, context, message) {
  return crypto.sign('sha256', withContext(context, message), options(privateKey));
}

function verify(publicKey, signature, context, message) {
  return crypto.verify('sha256', withContext(context, message), options(publicKey), signature);
}

module.exports = { sign, verify };
