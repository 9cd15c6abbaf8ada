'use strict';
// protocol.md conventions: big-endian integers, and the transcript encoding enc() of §6.3.

function u8(n) { return Buffer.from([n]); }
function u16(n) { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; }
function u32(n) { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; }
function u64(n) { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; }
function i64(n) { const b = Buffer.alloc(8); b.writeBigInt64BE(BigInt(n)); return b; }

// A field: a number (u64), a string or Buffer (u32 len || bytes), an array of Buffers (u32 count || items).
function enc(...fields) {
  const parts = [];
  for (const f of fields) {
    if (typeof f === 'number' || typeof f === 'bigint') {
      parts.push(u64(f));
    } else if (Array.isArray(f)) {
      parts.push(u32(f.length));
      for (const item of f) parts.push(u32(item.length), item);
    } else {
      const data = typeof f === 'string' ? Buffer.from(f, 'utf8') : f;
      parts.push(u32(data.length), data);
    }
  }
  return Buffer.concat(parts);
}

const hex = (s) => Buffer.from(s, 'hex');

module.exports = { u8, u16, u32, u64, i64, enc, hex };
