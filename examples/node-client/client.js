#!/usr/bin/env node
// Calling the DataMCP mesh from Node with @grpc/grpc-js, loading proto/ at
// run time with @grpc/proto-loader (no generated code). It shows:
//   1. a task (ExecuteTask on the built-in echo agent),
//   2. a subscription: publish three events, receive them, ack each one,
//   3. an error's google.rpc.Status details (ErrorInfo, BadRequest, RetryInfo,
//      QuotaFailure) decoded with protobufjs from proto/google/rpc.
// Usage: node client.js [--target HOST:PORT] [--api-key KEY]
// (env DATAMCP_ADDRESS, DATAMCP_API_KEY). Exit 0 when every step worked.
'use strict';

const path = require('path');
const crypto = require('crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');

function option(name, envName, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  return process.env[envName] || fallback;
}

const target = option('target', 'DATAMCP_ADDRESS', '127.0.0.1:50051');
const apiKey = option('api-key', 'DATAMCP_API_KEY', '');

// --- the services, loaded from proto/ ------------------------------------------

const definition = protoLoader.loadSync(
  ['datamcp/v1/agents.proto', 'datamcp/v1/events.proto'],
  { includeDirs: [PROTO_ROOT], keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).datamcp.v1;
const credentials = grpc.credentials.createInsecure();
const agents = new v1.AgentService(target, credentials);
const events = new v1.EventService(target, credentials);

function metadata() {
  const md = new grpc.Metadata();
  if (apiKey) md.set('authorization', `ApiKey ${apiKey}`);
  return md;
}

// google.protobuf.Value <-> plain JavaScript (proto-loader gives the oneof form).
function toValue(x) {
  if (x === null || x === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof x === 'number') return { numberValue: x };
  if (typeof x === 'string') return { stringValue: x };
  if (typeof x === 'boolean') return { boolValue: x };
  if (Array.isArray(x)) return { listValue: { values: x.map(toValue) } };
  const fields = {};
  for (const [k, v] of Object.entries(x)) fields[k] = toValue(v);
  return { structValue: { fields } };
}

function fromValue(v) {
  if (!v) return null;
  switch (v.kind) {
    case 'numberValue': return v.numberValue;
    case 'stringValue': return v.stringValue;
    case 'boolValue': return v.boolValue;
    case 'listValue': return (v.listValue.values || []).map(fromValue);
    case 'structValue': {
      const out = {};
      for (const [k, f] of Object.entries(v.structValue.fields || {})) out[k] = fromValue(f);
      return out;
    }
    default: return null;
  }
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata(), { deadline: Date.now() + 30000 }, (err, reply) => (
      err ? reject(err) : resolve(reply)));
  });
}

// --- google.rpc.Status details ---------------------------------------------------

const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => (
  target.startsWith('google/protobuf/') ? target : path.join(PROTO_ROOT, target));
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const Status = rpcRoot.lookupType('google.rpc.Status');

// Decode the grpc-status-details-bin trailer of a failed call: never parse the
// message text, which is for people and may be shortened.
function errorDetails(err) {
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!raw) return [];
  const status = Status.decode(raw);
  return status.details.map((any) => {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    const type = rpcRoot.lookupType(typeName);
    return { type: typeName, detail: type.toObject(type.decode(any.value), { defaults: false }) };
  });
}

// --- the three steps ---------------------------------------------------------------

async function runTask() {
  const reply = await unary(agents, 'ExecuteTask', {
    task: { capability: 'echo', input: toValue({ hello: 'node', n: 2 }) },
  });
  const result = fromValue(reply.task.result);
  console.log(`task ${reply.task.id} ${reply.task.state} result=${JSON.stringify(result)}`);
  if (reply.task.state !== 'TASK_STATE_SUCCEEDED' || result.n !== 2) throw new Error('echo failed');
}

async function subscribeAndAck() {
  const run = crypto.randomBytes(4).toString('hex');
  const subscription = `node-demo-${run}`;
  const call = events.Subscribe(metadata());
  const received = [];
  const done = new Promise((resolve, reject) => {
    call.on('data', (message) => {
      if (message.subscribed) {
        // Subscribed: now publish three events the filter matches, one after
        // another (events of one subject are delivered in publish order).
        [1, 2, 3].reduce((previous, i) => previous.then(() => unary(events, 'Publish', {
          event: { type: 'node.demo', source: '/examples/node-client', subject: run, data: toValue({ i }) },
        })), Promise.resolve()).catch(reject);
      } else if (message.delivery) {
        const event = message.delivery.event;
        received.push(fromValue(event.data).i);
        console.log(`delivery seq=${event.sequence} type=${event.type} data=${JSON.stringify(fromValue(event.data))}`);
        call.write({ ack: { sequences: [event.sequence] } });
        if (received.length === 3) resolve();
      }
    });
    call.on('error', (err) => { if (err.code !== grpc.status.CANCELLED) reject(err); });
  });
  call.write({
    open: { subscription, filter: { types: ['node.demo'], subject: run }, maxInFlight: 10 },
  });
  await done;
  call.cancel();
  await unary(events, 'DeleteSubscription', { subscription });
  console.log(`acked ${received.length} events in order: ${received.join(',')}`);
  if (received.join(',') !== '1,2,3') throw new Error('events out of order');
}

async function decodeAnError() {
  try {
    await unary(agents, 'ExecuteTask', { task: { capability: 'no.such.capability', input: toValue({}) } });
  } catch (err) {
    console.log(`error ${grpc.status[err.code]}`);
    const details = errorDetails(err);
    for (const { type, detail } of details) console.log(`  ${type} ${JSON.stringify(detail)}`);
    const info = details.find((d) => d.type === 'google.rpc.ErrorInfo');
    const bad = details.find((d) => d.type === 'google.rpc.BadRequest');
    if (!info || !bad || bad.detail.fieldViolations[0].field !== 'task.capability') {
      throw new Error('expected ErrorInfo and a BadRequest on task.capability');
    }
    return;
  }
  throw new Error('the unknown capability was accepted');
}

async function main() {
  await runTask();
  await subscribeAndAck();
  await decodeAnError();
  console.log('OK');
}

main().then(() => process.exit(0), (err) => {
  console.error(`node-client: ${err.message || err}`);
  process.exit(1);
});
