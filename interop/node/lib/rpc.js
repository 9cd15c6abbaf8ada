'use strict';
// An enrolled agent's gRPC clients (mutual TLS with its certificate), built from protos/kms/v1.
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const crypto = require('node:crypto');
const { certificate, serialOf, trustDomainOf } = require('./certs');

const PROTOS = path.resolve(__dirname, '..', '..', '..', 'protos');

function loadPackage() {
  const files = ['keys', 'revocation', 'handshake'].map((n) => `kms/v1/${n}.proto`);
  const def = protoLoader.loadSync(files, { includeDirs: [PROTOS], keepCase: true, longs: Number, enums: String, oneofs: true });
  return grpc.loadPackageDefinition(def).kms.v1;
}

// An agent's state directory: agent.key, agent.crt, ca.crt, agent.json (protocol.md §1).
function loadAgent(dir) {
  const read = (name) => fs.readFileSync(path.join(dir, name));
  const settings = JSON.parse(read('agent.json'));
  const cert = certificate(read('agent.crt'));
  return {
    settings,
    key: crypto.createPrivateKey(read('agent.key')),
    certPem: read('agent.crt'),
    keyPem: read('agent.key'),
    chain: [cert.raw],
    serial: serialOf(cert),
    caPem: read('ca.crt'),
    ca: certificate(read('ca.crt')),
    trustDomain: trustDomainOf(settings.spiffe_id),
  };
}

function connect(agent) {
  const v1 = loadPackage();
  const address = agent.settings.servers[0];
  const creds = grpc.credentials.createSsl(agent.caPem, agent.keyPem, agent.certPem);
  const make = (Service) => new Service(address, creds);
  return { address, keys: make(v1.Keys), revocation: make(v1.Revocation), handshake: make(v1.Handshake) };
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 10000 }, (err, answer) => (err ? reject(err) : resolve(answer)));
  });
}

module.exports = { loadAgent, connect, unary };
