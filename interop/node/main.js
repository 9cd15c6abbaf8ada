#!/usr/bin/env node
'use strict';
// Seed KMS from outside: a second implementation written from docs/protocol.md alone.
//
//   node main.js vectors DIR                       check tests/vectors
//   node main.js exchange --dir STATE --peer P     X25519 exchange with "server" or an agent (listening)
//   node main.js decrypt --dir STATE IN OUT        decrypt a kms-agent encrypt file
//   node main.js verify --dir STATE FILE SIG       verify a kms-agent sign signature (either format)
//
// Prints one JSON line; on failure one line on stderr (with the gRPC code, if any) and exit 1.
const fs = require('node:fs');
const { checkVectors } = require('./lib/vectors');
const { loadAgent, connect, unary } = require('./lib/rpc');
const { Initiator } = require('./lib/handshake');
const { checkAgent, checkServer } = require('./lib/certs');
const { unwrap } = require('./lib/wrap');
const envelope = require('./lib/envelope');
const { parseSignature, parseKeySignature, verifyFile, verifyKeyFile } = require('./lib/signature');

function options(argv) {
  const opts = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) opts[argv[i].slice(2)] = argv[++i];
    else opts._.push(argv[i]);
  }
  return opts;
}

const isRevokedVia = (rpc) => async (serial) => (await unary(rpc.revocation, 'CheckCertificate', { serial })).status !== 'good';

async function exchange(agent, rpc, peer) {
  const now = new Date();
  const host = rpc.address.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  const check = peer === 'server'
    ? async (chain) => checkServer(chain, agent.ca, host, now)
    : async (chain) => {
      const found = checkAgent(chain, agent.ca, agent.trustDomain, peer, now);
      if (await isRevokedVia(rpc)(found.serial)) throw new Error(`the peer's certificate ${found.serial} was revoked`);
      return found;
    };
  const machine = new Initiator({ key: agent.key, chain: agent.chain }, check, peer);
  const call = rpc.handshake.Exchange({ deadline: Date.now() + 15000 });
  const frames = call[Symbol.asyncIterator]();
  const next = async (want) => {
    const { value, done } = await frames.next();
    if (done || value.frame !== want) throw new Error(`expected ${want}, got ${done ? 'the end' : value.frame}`);
    return value[want];
  };
  call.write({ hello: machine.start() });
  call.write({ init_auth: await machine.receiveRespAuth(await next('resp_auth')) });
  const session = machine.receiveFinished(await next('finished'));
  call.end();
  const { done } = await frames.next(); // the server ends the call with OK
  if (!done) throw new Error('the server sent more than the exchange needs');
  return { session_id: session.sessionId, peer: session.peer, key_base64: session.key.toString('base64') };
}

async function decrypt(agent, rpc, input, output) {
  const data = fs.readFileSync(input);
  const header = envelope.parseHeader(data);
  const answer = await unary(rpc.keys, 'FetchKey', {
    name: header.name, version: header.keyVersion, purpose: 'FETCH_PURPOSE_DECRYPT', key_pair: false,
  });
  if (answer.name !== header.name || answer.version !== header.keyVersion || answer.wrapped_for_serial !== agent.serial) {
    throw new Error('the server answered for another key or certificate');
  }
  const key = unwrap(agent.key, answer.wrapped_key, header.name, header.keyVersion, agent.serial);
  fs.writeFileSync(output, envelope.decrypt(data, key).plaintext, { mode: 0o600 });
  return { key: header.name, version: header.keyVersion, file: output };
}

async function verify(agent, rpc, file, sigPath) {
  const text = fs.readFileSync(sigPath, 'utf8');
  if (JSON.parse(text).format === 'seed-kms-key-signature-v1') {
    const sig = parseKeySignature(text);
    const found = await unary(rpc.keys, 'GetPublicKey', { name: sig.key, version: sig.version });
    if (found.name !== sig.key || found.version !== sig.version) throw new Error('the server answered for another key');
    verifyKeyFile(sig, fs.readFileSync(file), { publicKey: found.public_key, keyType: found.key_type, state: found.state });
    return { valid: true, key: sig.key, version: sig.version, state: found.state };
  }
  const sig = parseSignature(text);
  const signer = await verifyFile(sig, fs.readFileSync(file), {
    ca: agent.ca, trustDomain: agent.trustDomain, signer: null, isRevoked: isRevokedVia(rpc), now: Date.now() / 1000,
  });
  return { valid: true, signer: signer.name, serial: signer.serial, signed_at: sig.signedAt };
}

async function main(argv) {
  const [command, ...rest] = argv;
  const opts = options(rest);
  if (command === 'vectors') return checkVectors(opts._[0]);
  const agent = loadAgent(opts.dir);
  const rpc = connect(agent);
  try {
    if (command === 'exchange') return await exchange(agent, rpc, opts.peer);
    if (command === 'decrypt') return await decrypt(agent, rpc, opts._[0], opts._[1]);
    if (command === 'verify') return await verify(agent, rpc, opts._[0], opts._[1]);
    throw new Error(`unknown command ${command}`);
  } finally {
    for (const client of [rpc.keys, rpc.revocation, rpc.handshake]) client.close();
  }
}

main(process.argv.slice(2)).then(
  (result) => { process.stdout.write(JSON.stringify(result) + '\n'); },
  (err) => {
    const code = err.code !== undefined && err.details !== undefined ? ` (gRPC ${err.code}: ${err.details})` : '';
    process.stderr.write(`interop-node: ${err.message}${code}\n`);
    process.exitCode = 1;
  },
);
