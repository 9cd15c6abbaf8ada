'use strict';
// protocol.md §3: the FetchKey wrap, formats 1 and 2, and the OAEP label.
const crypto = require('node:crypto');
const { u16, u32 } = require('./encoding');

class UnwrapError extends Error {}

function field16(text) {
  const data = Buffer.from(text, 'utf8');
  return Buffer.concat([u16(data.length), data]);
}

function label1(name, version, serial) {
  return Buffer.concat([Buffer.from('seed-kms wrap v1\x00', 'latin1'), field16(name), u32(version), field16(serial)]);
}

function label2(name, version, serial) {
  return Buffer.concat([label1(name, version, serial), field16('format 2: aes-kwp pkcs8')]);
}

function oaepDecrypt(privateKey, label, ciphertext) {
  try {
    return crypto.privateDecrypt(
      { key: privateKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: label },
      ciphertext,
    );
  } catch {
    throw new UnwrapError('wrapped key does not unwrap');
  }
}

function modulusBytes(privateKey) {
  return crypto.createPublicKey(privateKey).asymmetricKeyDetails.modulusLength / 8;
}

// Format 1: 0x01 || RSA-OAEP(label_1, 32-byte key).
function unwrap(privateKey, blob, name, version, serial) {
  const k = modulusBytes(privateKey);
  if (blob.length !== 1 + k || blob[0] !== 0x01) throw new UnwrapError('wrapped key does not unwrap');
  const key = oaepDecrypt(privateKey, label1(name, version, serial), blob.subarray(1));
  if (key.length !== 32) throw new UnwrapError('wrapped key does not unwrap');
  return key;
}

// Format 2: 0x02 || RSA-OAEP(label_2, K) || AES-KWP(K, PKCS#8 DER).
function unwrapPrivateKey(privateKey, blob, name, version, serial) {
  const k = modulusBytes(privateKey);
  if (blob.length < 1 + k + 16 || (blob.length - 1 - k) % 8 !== 0 || blob[0] !== 0x02) {
    throw new UnwrapError('wrapped key does not unwrap');
  }
  const kek = oaepDecrypt(privateKey, label2(name, version, serial), blob.subarray(1, 1 + k));
  if (kek.length !== 32) throw new UnwrapError('wrapped key does not unwrap');
  try {
    // RFC 5649: AES Key Wrap with Padding, its alternative initial value A65959A6.
    const d = crypto.createDecipheriv('id-aes256-wrap-pad', kek, Buffer.from('a65959a6', 'hex'));
    return Buffer.concat([d.update(blob.subarray(1 + k)), d.final()]);
  } catch {
    throw new UnwrapError('wrapped key does not unwrap');
  }
}

module.exports = { UnwrapError, label1, label2, unwrap, unwrapPrivateKey };
