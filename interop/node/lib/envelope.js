'use strict';
// protocol.md §4: the envelope file (kms-agent encrypt).
const crypto = require('node:crypto');
const { u32 } = require('./encoding');

class EnvelopeError extends Error {}
const KEY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const opaque = () => new EnvelopeError('cannot decrypt: damaged, truncated, or not a Seed KMS envelope');

function parseHeader(data) {
  if (data.length < 2 || data[0] !== 0x01) throw opaque();
  const n = data[1];
  const end = 2 + n + 8 + 32 + 7;
  if (data.length < end) throw opaque();
  let name;
  try {
    name = new TextDecoder('utf-8', { fatal: true }).decode(data.subarray(2, 2 + n));
  } catch {
    throw opaque();
  }
  const keyVersion = data.readUInt32BE(2 + n);
  const chunkSize = data.readUInt32BE(6 + n);
  if (!KEY_NAME.test(name) || keyVersion < 1 || keyVersion > 2 ** 31 - 1 || chunkSize < 1 || chunkSize > 16 * 1024 * 1024) {
    throw opaque();
  }
  return {
    name, keyVersion, chunkSize,
    body: data.subarray(0, 2 + n + 8),
    salt: data.subarray(2 + n + 8, 2 + n + 40),
    prefix: data.subarray(2 + n + 40, end),
    bytes: data.subarray(0, end),
  };
}

// Decrypts a whole envelope held in memory, with the AES-256 key of (name, keyVersion).
function decrypt(data, key) {
  const h = parseHeader(data);
  const info = Buffer.concat([Buffer.from('seed-kms envelope v1\x00', 'latin1'), h.body]);
  const fileKey = Buffer.from(crypto.hkdfSync('sha256', key, h.salt, info, 32));
  const full = h.chunkSize + 16;
  const out = [];
  let off = h.bytes.length;
  for (let i = 0; ; i++) {
    if (i >= 2 ** 32) throw opaque();
    const piece = data.subarray(off, off + full);
    off += piece.length;
    const last = off >= data.length;
    if (piece.length < 16 || (!last && piece.length !== full) || (last && i > 0 && piece.length === 16)) throw opaque();
    const nonce = Buffer.concat([h.prefix, u32(i), Buffer.from([last ? 1 : 0])]);
    const d = crypto.createDecipheriv('aes-256-gcm', fileKey, nonce);
    d.setAAD(h.bytes);
    d.setAuthTag(piece.subarray(piece.length - 16));
    try {
      out.push(d.update(piece.subarray(0, piece.length - 16)), d.final());
    } catch {
      throw opaque();
    }
    if (last) return { header: h, plaintext: Buffer.concat(out) };
  }
}

module.exports = { EnvelopeError, parseHeader, decrypt };
