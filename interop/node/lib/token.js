'use strict';
// protocol.md §2: join tokens.
const crypto = require('node:crypto');

const SHAPE = /^([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;

function parseToken(text) {
  const m = SHAPE.exec(text.trim());
  if (!m) throw new Error('join token is malformed');
  const secret = Buffer.from(m[2], 'base64url');
  if (secret.length !== 32 || secret.toString('base64url') !== m[2]) throw new Error('join token is malformed');
  return { id: m[1], secret };
}

function secretHash(secret) {
  return crypto.createHash('sha256').update(Buffer.concat([Buffer.from('seed-kms join token v1\x00', 'latin1'), secret])).digest();
}

module.exports = { parseToken, secretHash };
