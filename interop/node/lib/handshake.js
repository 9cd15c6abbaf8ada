'use strict';
// protocol.md §6: the key exchange, initiator side, X25519. Pure: messages in, messages out.
const crypto = require('node:crypto');
const { enc } = require('./encoding');
const signing = require('./signing');

class HandshakeError extends Error {}
const sha256 = (...parts) => crypto.createHash('sha256').update(Buffer.concat(parts)).digest();
const CTX = 'seed-kms handshake v1';

function derive(shared, nonceI, nonceR, label, th, length = 32) {
  const info = Buffer.concat([Buffer.from(`${CTX} ${label}\x00`, 'latin1'), th]);
  return Buffer.from(crypto.hkdfSync('sha256', shared, Buffer.concat([nonceI, nonceR]), info, length));
}

function mac(key, label, th) {
  return crypto.createHmac('sha256', key).update(Buffer.concat([Buffer.from(label + '\x00', 'latin1'), th])).digest();
}

function th1Of(hello, resp) {
  return sha256(
    enc(hello.version, hello.group, hello.nonce, hello.share, hello.responder),
    enc(resp.nonce, resp.share, resp.chain),
  );
}
const th2Of = (th1, resp, chainI) => sha256(th1, enc(resp.signature, resp.mac), enc(chainI));
const th3Of = (th2, sigI, macI) => sha256(th2, enc(sigI, macI));

function keySchedule(shared, nonceI, nonceR, th1) {
  return {
    macR: derive(shared, nonceI, nonceR, 'responder mac', th1),
    macI: derive(shared, nonceI, nonceR, 'initiator mac', th1),
  };
}

function sessionKeys(shared, nonceI, nonceR, th3) {
  return {
    key: derive(shared, nonceI, nonceR, 'session key', th3),
    sessionId: derive(shared, nonceI, nonceR, 'session id', th3, 16).toString('hex'),
    confirmKey: derive(shared, nonceI, nonceR, 'confirm', th3),
  };
}

// X25519 keys from raw bytes (RFC 8410 encodings).
const X25519_PKCS8 = Buffer.from('302e020100300506032b656e04220420', 'hex');
function x25519Private(raw) {
  return crypto.createPrivateKey({ key: Buffer.concat([X25519_PKCS8, raw]), format: 'der', type: 'pkcs8' });
}
function x25519Share(privateKey) {
  return Buffer.from(crypto.createPublicKey(privateKey).export({ format: 'jwk' }).x, 'base64url');
}
function x25519(privateKey, share) {
  if (share.length !== 32) throw new HandshakeError('X25519 share must be 32 bytes');
  const publicKey = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: share.toString('base64url') }, format: 'jwk' });
  let shared;
  try {
    shared = crypto.diffieHellman({ privateKey, publicKey });
  } catch {
    throw new HandshakeError('X25519 share is a low-order point');
  }
  if (shared.every((b) => b === 0)) throw new HandshakeError('X25519 share is a low-order point');
  return shared;
}

const equal = (a, b) => a.length === b.length && crypto.timingSafeEqual(a, b);

// Initiator: start() -> hello; receiveRespAuth(m) -> init_auth; receiveFinished(m) -> session.
class Initiator {
  // identity: {key (private KeyObject), chain: [DER]}; checkPeer(chain) -> Promise<{name, serial, publicKey}>
  constructor(identity, checkPeer, responder, { nonce, ephemeral } = {}) {
    this.identity = identity;
    this.checkPeer = checkPeer;
    this.responder = responder;
    this.nonce = nonce || crypto.randomBytes(32);
    this.eph = ephemeral ? x25519Private(ephemeral) : crypto.generateKeyPairSync('x25519').privateKey;
    this.state = 'start';
  }

  expect(state, what) {
    if (this.state !== state) {
      this.state = 'dead';
      throw new HandshakeError(`handshake message ${what} is not allowed now`);
    }
  }

  start() {
    this.expect('start', 'hello');
    this.hello = { version: 1, group: 'x25519', nonce: this.nonce, share: x25519Share(this.eph), responder: this.responder };
    this.state = 'sent_hello';
    return this.hello;
  }

  async receiveRespAuth(m) {
    this.expect('sent_hello', 'resp_auth');
    this.state = 'dead'; // until this step succeeds
    if (m.nonce.length !== 32) throw new HandshakeError('responder nonce must be 32 bytes');
    if (m.chain.length < 1 || m.chain.length > 4 || m.chain.some((c) => c.length < 1 || c.length > 8192)) {
      throw new HandshakeError('bad certificate chain shape');
    }
    this.shared = x25519(this.eph, m.share);
    const peer = await this.checkPeer(m.chain);
    if (peer.name !== this.responder) throw new HandshakeError(`the responder is ${peer.name}, not ${this.responder}`);
    const th1 = th1Of(this.hello, m);
    const keys = keySchedule(this.shared, this.nonce, m.nonce, th1);
    if (!signing.verify(peer.publicKey, m.signature, `${CTX} responder`, th1)) {
      throw new HandshakeError("the responder's signature over the exchange does not verify");
    }
    if (!equal(m.mac, mac(keys.macR, 'responder', th1))) throw new HandshakeError("the responder's MAC does not verify");
    const th2 = th2Of(th1, m, this.identity.chain);
    const signature = signing.sign(this.identity.key, `${CTX} initiator`, th2);
    const macI = mac(keys.macI, 'initiator', th2);
    this.th3 = th3Of(th2, signature, macI);
    this.nonceR = m.nonce;
    this.peer = peer;
    this.state = 'sent_auth';
    return { chain: this.identity.chain, signature, mac: macI };
  }

  receiveFinished(m) {
    this.expect('sent_auth', 'finished');
    this.state = 'dead';
    const s = sessionKeys(this.shared, this.nonce, this.nonceR, this.th3);
    if (!equal(m.confirm, mac(s.confirmKey, 'finished', this.th3))) {
      throw new HandshakeError('key confirmation failed: the exchange was altered');
    }
    this.state = 'done';
    return { key: s.key, sessionId: s.sessionId, peer: this.peer.name };
  }
}

module.exports = {
  HandshakeError, Initiator, derive, mac, th1Of, th2Of, th3Of, keySchedule, sessionKeys, x25519, x25519Private,
};
