'use strict';
// Checks every vector file of tests/vectors that protocol.md names, with this implementation.
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { hex } = require('./encoding');
const wrap = require('./wrap');
const envelope = require('./envelope');
const hs = require('./handshake');
const { certificate, checkAgent, checkServer } = require('./certs');
const signing = require('./signing');
const { parseToken, secretHash } = require('./token');
const { parseSignature, parseKeySignature, statement, verifyFile, verifyKeyFile } = require('./signature');

const b64u = (n) => Buffer.from(n.toString(16).padStart(2 * Math.ceil(n.toString(16).length / 2), '0'), 'hex').toString('base64url');
function modInverse(a, m) {
  let [r0, r1, s0, s1] = [a % m, m, 1n, 0n];
  while (r1) { const q = r0 / r1; [r0, r1, s0, s1] = [r1, r0 - q * r1, s1, s0 - q * s1]; }
  return ((s0 % m) + m) % m;
}

// wrap.json's throwaway key, from p, q, d, e (hex).
function rsaKey(k) {
  const [p, q, d, e] = ['p', 'q', 'd', 'e'].map((x) => BigInt('0x' + k[x]));
  const jwk = {
    kty: 'RSA', n: b64u(p * q), e: b64u(e), d: b64u(d), p: b64u(p), q: b64u(q),
    dp: b64u(d % (p - 1n)), dq: b64u(d % (q - 1n)), qi: b64u(modInverse(q, p)),
  };
  return crypto.createPrivateKey({ key: jwk, format: 'jwk' });
}

function checkWrap(dir) {
  const v = JSON.parse(fs.readFileSync(path.join(dir, 'wrap.json')));
  const key = rsaKey(v.private_key);
  for (const c of v.valid) {
    assert.equal(wrap.label1(c.name, c.version, c.serial).toString('hex'), c.label_hex);
    assert.equal(wrap.unwrap(key, hex(c.wrapped_hex), c.name, c.version, c.serial).toString('hex'), c.key_hex);
    for (const bad of v.invalid_labels) {
      assert.throws(() => wrap.unwrap(key, hex(c.wrapped_hex), bad.name, bad.version, bad.serial), wrap.UnwrapError, bad.why);
    }
  }
  const v2 = JSON.parse(fs.readFileSync(path.join(dir, 'wrap_private_key.json')));
  for (const c of v2.valid) {
    assert.equal(wrap.label2(c.name, c.version, c.serial).toString('hex'), c.label_hex);
    assert.equal(wrap.unwrapPrivateKey(key, hex(c.wrapped_hex), c.name, c.version, c.serial).toString('hex'), c.pkcs8_hex);
    assert.throws(() => wrap.unwrapPrivateKey(key, hex(c.wrapped_hex), c.name, c.version + 1, c.serial), wrap.UnwrapError);
  }
  return v.valid.length + v2.valid.length;
}

function checkEnvelope(dir) {
  const v = JSON.parse(fs.readFileSync(path.join(dir, 'envelope.json')));
  for (const c of v.valid) {
    const data = hex(c.envelope_hex);
    assert.equal(envelope.decrypt(data, hex(c.key_hex)).plaintext.toString('hex'), c.plaintext_hex);
    assert.throws(() => envelope.decrypt(data.subarray(0, data.length - 1), hex(c.key_hex)), envelope.EnvelopeError);
    const flipped = Buffer.from(data);
    flipped[flipped.length - 1] ^= 1;
    assert.throws(() => envelope.decrypt(flipped, hex(c.key_hex)), envelope.EnvelopeError);
  }
  return v.valid.length;
}

function checkKeySchedule(dir) {
  const v = JSON.parse(fs.readFileSync(path.join(dir, 'handshake.json')));
  for (const c of v.key_schedule) {
    const [shared, ni, nr, th] = [c.shared, c.nonce_i, c.nonce_r, c.th].map(hex);
    const k = hs.keySchedule(shared, ni, nr, th);
    const s = hs.sessionKeys(shared, ni, nr, th);
    assert.deepEqual([k.macR, k.macI, s.key, s.confirmKey].map((b) => b.toString('hex')), [c.mac_r, c.mac_i, c.session_key, c.confirm]);
    assert.equal(s.sessionId, c.session_id);
  }
  return v.key_schedule.length;
}

function checkTranscript(dir) {
  const v = JSON.parse(fs.readFileSync(path.join(dir, 'transcript.json')));
  const ca = certificate(hex(v.ca));
  for (const c of v.exchanges) {
    const hello = { ...c.hello, nonce: hex(c.hello.nonce), share: hex(c.hello.share) };
    const resp = { nonce: hex(c.resp_auth.nonce), share: hex(c.resp_auth.share), chain: c.resp_auth.chain.map(hex), signature: hex(c.resp_auth.signature), mac: hex(c.resp_auth.mac) };
    const init = { chain: c.init_auth.chain.map(hex), signature: hex(c.init_auth.signature), mac: hex(c.init_auth.mac) };
    const at = new Date(new Date(certificate(resp.chain[0]).validFrom).getTime() + 86400e3);
    const r = hello.responder === 'server' ? checkServer(resp.chain, ca, '127.0.0.1', at) : checkAgent(resp.chain, ca, v.trust_domain, hello.responder, at);
    const i = checkAgent(init.chain, ca, v.trust_domain, null, at);
    const eph = hs.x25519Private(hex(c.initiator_ephemeral_private));
    const shared = hs.x25519(eph, resp.share);
    const th1 = hs.th1Of(hello, resp);
    const keys = hs.keySchedule(shared, hello.nonce, resp.nonce, th1);
    assert.ok(signing.verify(r.publicKey, resp.signature, 'seed-kms handshake v1 responder', th1), 'sig_r');
    assert.deepEqual(hs.mac(keys.macR, 'responder', th1), resp.mac, 'mac_r');
    const th2 = hs.th2Of(th1, resp, init.chain);
    assert.ok(signing.verify(i.publicKey, init.signature, 'seed-kms handshake v1 initiator', th2), 'sig_i');
    assert.deepEqual(hs.mac(keys.macI, 'initiator', th2), init.mac, 'mac_i');
    const th3 = hs.th3Of(th2, init.signature, init.mac);
    const s = hs.sessionKeys(shared, hello.nonce, resp.nonce, th3);
    assert.equal(hs.mac(s.confirmKey, 'finished', th3).toString('hex'), c.finished.confirm, 'confirm');
    assert.equal(s.key.toString('hex'), c.session_key);
    assert.equal(s.sessionId, c.session_id);
    // And the responder's side from its ephemeral key: the same secret.
    assert.deepEqual(hs.x25519(hs.x25519Private(hex(c.responder_ephemeral_private)), hello.share), shared);
  }
  return v.exchanges.length;
}

function checkTokens(dir) {
  const v = JSON.parse(fs.readFileSync(path.join(dir, 'join_token.json')));
  for (const c of v.valid) {
    const t = parseToken(c.text);
    assert.deepEqual([t.id, t.secret.toString('hex'), secretHash(t.secret).toString('hex')], [c.id_bytes, c.secret, c.secret_hash]);
  }
  for (const c of v.invalid) assert.throws(() => parseToken(c.text), Error, c.why);
  return v.valid.length + v.invalid.length;
}

async function checkSignature(dir) {
  const v = JSON.parse(fs.readFileSync(path.join(dir, 'signature.json')));
  const sig = parseSignature(v.signature_file);
  assert.equal(statement(sig.digest, sig.signedAt).toString('hex'), v.statement_hex);
  const opts = { ca: certificate(hex(v.ca)), trustDomain: v.trust_domain, signer: v.signer, isRevoked: async () => false, now: sig.signedAt };
  assert.equal((await verifyFile(sig, hex(v.file_hex), opts)).name, v.signer);
  await assert.rejects(verifyFile(sig, hex(v.tampered_file_hex), opts));
  await assert.rejects(verifyFile(sig, hex(v.file_hex), { ...opts, isRevoked: async () => true }));
  const ks = parseKeySignature(v.key_signature.signature_file);
  const pub = { publicKey: hex(v.key_signature.public_key_spki_hex), keyType: 'ec-p256', state: 'active' };
  verifyKeyFile(ks, hex(v.file_hex), pub);
  assert.throws(() => verifyKeyFile(ks, hex(v.tampered_file_hex), pub));
  assert.throws(() => verifyKeyFile(ks, hex(v.file_hex), { ...pub, state: 'compromised' }));
  return 2;
}

async function checkVectors(dir) {
  return {
    wrap: checkWrap(dir),
    envelope: checkEnvelope(dir),
    key_schedule: checkKeySchedule(dir),
    transcript: checkTranscript(dir),
    join_token: checkTokens(dir),
    signature: await checkSignature(dir),
  };
}

module.exports = { checkVectors };
