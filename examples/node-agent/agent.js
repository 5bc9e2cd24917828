#!/usr/bin/env node
// A remote DataMCP agent written in Node with @grpc/grpc-js.
//
// It connects to datamcp.v1.AgentService/Connect, announces three
// capabilities (text.reverse, text.stats, text.slow), runs the assignments the
// mesh sends, heartbeats on the interval the server asks for and reconnects
// with backoff when the stream ends. See README.md.
//
// stdout carries exactly one kind of line, `READY <agent_id>`, after every
// welcome; everything else is one JSON object per line on stderr.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// --- configuration ---------------------------------------------------------

const USAGE = `usage: node agent.js [options]

options (environment variable in brackets):
  --target HOST:PORT       mesh address            [DATAMCP_TARGET, default 127.0.0.1:50051]
  --api-key KEY            sent as 'authorization: ApiKey KEY'           [DATAMCP_API_KEY]
  --name NAME              agent name              [DATAMCP_AGENT_NAME, default node-text]
  --description TEXT       agent description                     [DATAMCP_AGENT_DESCRIPTION]
  --max-concurrency N      assignments at once     [DATAMCP_AGENT_MAX_CONCURRENCY, default 4]
  --weight N               share under the weighted strategy [DATAMCP_AGENT_WEIGHT, default 1]
  --tls-ca FILE            use TLS, trusting this CA bundle (PEM)         [DATAMCP_TLS_CA]
  --tls                    use TLS with the system roots                   [DATAMCP_TLS=1]
  --proto-root DIR         directory holding datamcp/v1/agents.proto     [DATAMCP_PROTO_ROOT]
  --verbose                also log heartbeats and progress          [DATAMCP_AGENT_VERBOSE=1]
  --check                  load the proto, build the client and exit
  --help                   show this text
`;

function parseArgs(argv, env) {
  const flags = {};
  const boolean = new Set(['tls', 'verbose', 'check', 'help']);
  const known = new Set([
    ...boolean, 'target', 'api-key', 'name', 'description', 'max-concurrency', 'weight',
    'tls-ca', 'proto-root',
  ]);
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new Error(`unexpected argument ${JSON.stringify(arg)}`);
    let key = arg.slice(2);
    let value;
    const eq = key.indexOf('=');
    if (eq >= 0) {
      value = key.slice(eq + 1);
      key = key.slice(0, eq);
    }
    if (!known.has(key)) throw new Error(`unknown option --${key}`);
    if (value === undefined && boolean.has(key)) {
      value = 'true';
    } else if (value === undefined) {
      if (i + 1 >= argv.length) throw new Error(`--${key} needs a value`);
      value = argv[(i += 1)];
    }
    flags[key] = value;
  }
  const pick = (flag, name, fallback) => {
    if (flags[flag] !== undefined) return flags[flag];
    if (env[name] !== undefined && env[name] !== '') return env[name];
    return fallback;
  };
  const truthy = (v) => ['1', 'true', 'yes', 'on'].includes(String(v).toLowerCase());
  const positiveInt = (v, what) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${what} must be a positive integer, got ${v}`);
    return n;
  };
  return {
    help: truthy(flags.help || false),
    check: truthy(flags.check || false),
    target: pick('target', 'DATAMCP_TARGET', '127.0.0.1:50051'),
    apiKey: pick('api-key', 'DATAMCP_API_KEY', ''),
    name: pick('name', 'DATAMCP_AGENT_NAME', 'node-text'),
    description: pick(
      'description',
      'DATAMCP_AGENT_DESCRIPTION',
      'Text utilities in Node: reverse, stats and a slow, cancellable sleeper',
    ),
    maxConcurrency: positiveInt(
      pick('max-concurrency', 'DATAMCP_AGENT_MAX_CONCURRENCY', '4'),
      'max concurrency',
    ),
    weight: positiveInt(pick('weight', 'DATAMCP_AGENT_WEIGHT', '1'), 'weight'),
    tlsCa: pick('tls-ca', 'DATAMCP_TLS_CA', ''),
    tls: truthy(pick('tls', 'DATAMCP_TLS', 'false')),
    protoRoot: pick('proto-root', 'DATAMCP_PROTO_ROOT', path.resolve(__dirname, '..', '..', 'proto')),
    verbose: truthy(pick('verbose', 'DATAMCP_AGENT_VERBOSE', 'false')),
  };
}

// --- logging: one JSON line per event on stderr ----------------------------

let logName = 'node-text';

function log(event, fields = {}, level = 'info') {
  const line = { ts: new Date().toISOString(), level, agent: logName, event, ...fields };
  process.stderr.write(`${JSON.stringify(line)}\n`);
}

// --- google.protobuf.Value <-> plain JS ------------------------------------
// proto-loader (keepCase: false) represents Value as
// {nullValue | numberValue | stringValue | boolValue | structValue | listValue},
// Struct as {fields: {key: Value}} and ListValue as {values: [Value]}.

function toValue(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  switch (typeof v) {
    case 'number':
      if (!Number.isFinite(v)) throw new TypeError(`cannot encode ${v} as JSON`);
      return { numberValue: v };
    case 'bigint':
      return { numberValue: Number(v) };
    case 'string':
      return { stringValue: v };
    case 'boolean':
      return { boolValue: v };
    case 'object':
      if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
      if (typeof v.toJSON === 'function') return toValue(v.toJSON());
      return { structValue: toStruct(v) };
    default:
      throw new TypeError(`cannot encode a ${typeof v} as google.protobuf.Value`);
  }
}

function toStruct(obj) {
  const fields = {};
  for (const [key, value] of Object.entries(obj)) {
    if (value !== undefined) fields[key] = toValue(value);
  }
  return { fields };
}

function fromValue(v) {
  if (v === null || v === undefined) return null;
  const kind = v.kind || ['nullValue', 'numberValue', 'stringValue', 'boolValue', 'structValue', 'listValue']
    .find((k) => v[k] !== undefined && v[k] !== null);
  switch (kind) {
    case 'numberValue':
      return Number(v.numberValue);
    case 'stringValue':
      return v.stringValue;
    case 'boolValue':
      return Boolean(v.boolValue);
    case 'structValue':
      return fromStruct(v.structValue);
    case 'listValue':
      return ((v.listValue && v.listValue.values) || []).map(fromValue);
    default:
      return null; // nullValue, or an unset Value
  }
}

function fromStruct(s) {
  const out = {};
  for (const [key, value] of Object.entries((s && s.fields) || {})) out[key] = fromValue(value);
  return out;
}

// Duration / Timestamp ({seconds: string (longs: String), nanos}) in milliseconds.
function toMillis(d) {
  if (!d) return 0;
  return Number(d.seconds || 0) * 1000 + Number(d.nanos || 0) / 1e6;
}

// --- capabilities ------------------------------------------------------------

class AgentError extends Error {
  constructor(message, { reason = 'AGENT_ERROR', retryable = false } = {}) {
    super(message);
    this.reason = reason;
    this.retryable = retryable;
  }
}

const TEXT_INPUT = {
  type: 'object',
  properties: { text: { type: 'string', description: 'the text to work on' } },
  required: ['text'],
  additionalProperties: false,
};

function requireText(input) {
  if (!input || typeof input !== 'object' || typeof input.text !== 'string') {
    throw new AgentError('input must be an object with a string "text"', { reason: 'INVALID_INPUT' });
  }
  return input.text;
}

function sleepWithProgress(seconds, task) {
  const total = seconds * 1000;
  const started = Date.now();
  return new Promise((resolve, reject) => {
    let timer = null;
    const onAbort = () => {
      clearInterval(timer);
      reject(new AgentError(`stopped: ${task.signal.reason}`, { reason: 'STOPPED' }));
    };
    const tick = () => {
      const elapsed = Date.now() - started;
      if (elapsed >= total) {
        clearInterval(timer);
        task.signal.removeEventListener('abort', onAbort);
        resolve({ slept: seconds });
        return;
      }
      task.progress((100 * elapsed) / total, `slept ${(elapsed / 1000).toFixed(1)}s of ${seconds}s`);
    };
    if (task.signal.aborted) {
      onAbort();
      return;
    }
    task.signal.addEventListener('abort', onAbort, { once: true });
    timer = setInterval(tick, 100);
    if (total <= 0) tick();
  });
}

const CAPABILITIES = {
  'text.reverse': {
    description: 'Reverse a text (by Unicode code point).',
    inputSchema: TEXT_INPUT,
    outputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] },
    run: async (input) => ({ text: Array.from(requireText(input)).reverse().join('') }),
  },
  'text.stats': {
    description: 'Count the characters (code points), words and lines of a text.',
    inputSchema: TEXT_INPUT,
    outputSchema: {
      type: 'object',
      properties: {
        chars: { type: 'integer' },
        words: { type: 'integer' },
        lines: { type: 'integer' },
      },
      required: ['chars', 'words', 'lines'],
    },
    run: async (input) => {
      const text = requireText(input);
      return {
        chars: Array.from(text).length,
        words: text.split(/\s+/u).filter(Boolean).length,
        // Like Python's str.splitlines(): a final line break ends a line, not starts one.
        lines: text === '' ? 0 : text.replace(/(\r\n|\r|\n)$/u, '').split(/\r\n|\r|\n/u).length,
      };
    },
  },
  'text.slow': {
    description: 'Sleep for a number of seconds, reporting progress every 100 ms; cancellable.',
    inputSchema: {
      type: 'object',
      properties: { seconds: { type: 'number', minimum: 0, maximum: 3600 } },
      required: ['seconds'],
      additionalProperties: false,
    },
    outputSchema: { type: 'object', properties: { slept: { type: 'number' } } },
    run: async (input, task) => {
      const seconds = input && input.seconds;
      if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 0) {
        throw new AgentError('input must be {"seconds": number >= 0}', { reason: 'INVALID_INPUT' });
      }
      return sleepWithProgress(seconds, task);
    },
  },
};

// --- the agent -----------------------------------------------------------------

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10_000;
const WELCOME_TIMEOUT_MS = 15_000;
const DEFAULT_HEARTBEAT_MS = 10_000;
const SHUTDOWN_GRACE_MS = 3_000;
// Statuses retrying cannot fix: wrong credentials, a rejected hello.
const FATAL_CODES = new Set([
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
  grpc.status.INVALID_ARGUMENT,
]);

function loadService(protoRoot) {
  const definition = protoLoader.loadSync('datamcp/v1/agents.proto', {
    keepCase: false,
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
    includeDirs: [protoRoot],
  });
  return grpc.loadPackageDefinition(definition).datamcp.v1.AgentService;
}

function credentials(config) {
  if (config.tlsCa) return grpc.credentials.createSsl(fs.readFileSync(config.tlsCa));
  if (config.tls) return grpc.credentials.createSsl();
  return grpc.credentials.createInsecure();
}

class RemoteAgent {
  constructor(config, AgentService) {
    this.config = config;
    this.client = new AgentService(config.target, credentials(config));
    this.session = null; // {call, agentId, welcomed, closed, heartbeat, welcomeTimer}
    this.running = new Map(); // task id -> {controller, capability, session}
    this.failures = 0; // consecutive sessions that ended without a welcome
    this.reconnectTimer = null;
    this.stopping = false;
  }

  start() {
    this.connect();
  }

  hello() {
    return {
      hello: {
        name: this.config.name,
        description: this.config.description,
        capabilities: Object.entries(CAPABILITIES).map(([name, cap]) => ({
          name,
          description: cap.description,
          inputSchema: toStruct(cap.inputSchema),
          outputSchema: toStruct(cap.outputSchema),
        })),
        maxConcurrency: this.config.maxConcurrency,
        weight: this.config.weight,
      },
    };
  }

  connect() {
    this.reconnectTimer = null;
    if (this.stopping) return;
    const metadata = new grpc.Metadata();
    if (this.config.apiKey) metadata.set('authorization', `ApiKey ${this.config.apiKey}`);
    log('connecting', { target: this.config.target });
    const call = this.client.Connect(metadata);
    const session = { call, agentId: '', welcomed: false, closed: false, heartbeat: null, welcomeTimer: null };
    this.session = session;
    call.on('data', (msg) => this.onMessage(session, msg));
    call.on('error', (err) => {
      // Always followed by 'status'; listened to so it is never unhandled.
      log('stream_error', { code: err.code, details: err.details }, 'warn');
    });
    call.on('status', (status) => this.onClosed(session, status));
    session.welcomeTimer = setTimeout(() => {
      log('welcome_timeout', { after_ms: WELCOME_TIMEOUT_MS }, 'warn');
      call.cancel();
    }, WELCOME_TIMEOUT_MS);
    this.send(session, this.hello());
  }

  send(session, message) {
    if (session.closed || session !== this.session) return false;
    try {
      session.call.write(message);
      return true;
    } catch (err) {
      log('write_failed', { error: String(err) }, 'warn');
      return false;
    }
  }

  onMessage(session, msg) {
    if (session.closed) return;
    switch (msg.kind) {
      case 'welcome':
        return this.onWelcome(session, msg.welcome);
      case 'assignment':
        return this.onAssignment(session, msg.assignment);
      case 'cancel':
        return this.onCancel(msg.cancel);
      default:
        log('unknown_message', { kind: msg.kind || null }, 'warn');
    }
  }

  onWelcome(session, welcome) {
    clearTimeout(session.welcomeTimer);
    session.welcomed = true;
    session.agentId = welcome.agentId;
    this.failures = 0;
    const interval = toMillis(welcome.heartbeatInterval) || DEFAULT_HEARTBEAT_MS;
    // Twice per interval, so one late timer never makes us miss it.
    const every = Math.max(50, Math.floor(interval / 2));
    session.heartbeat = setInterval(() => {
      if (this.send(session, { heartbeat: {} }) && this.config.verbose) log('heartbeat', {}, 'debug');
    }, every);
    log('welcome', { agent_id: session.agentId, heartbeat_interval_ms: interval, heartbeat_every_ms: every });
    process.stdout.write(`READY ${session.agentId}\n`);
  }

  onAssignment(session, a) {
    const taskId = a.taskId;
    const fields = { task_id: taskId, capability: a.capability, attempt: a.attempt, correlation_id: a.correlationId };
    if (this.stopping) {
      log('assignment_ignored', { ...fields, why: 'shutting down' }, 'warn');
      return;
    }
    if (this.running.has(taskId)) {
      log('assignment_duplicate', fields, 'warn');
      return;
    }
    log('assignment', fields);
    const fail = (reason, message, retryable) => {
      log('failure', { task_id: taskId, reason, message, retryable }, 'warn');
      this.send(session, { failure: { taskId, reason, message, retryable } });
    };
    const capability = CAPABILITIES[a.capability];
    if (!capability) {
      fail('UNKNOWN_CAPABILITY', `this agent has no capability ${JSON.stringify(a.capability)}`, false);
      return;
    }
    if (this.running.size >= this.config.maxConcurrency) {
      fail('AGENT_SATURATED', `already running ${this.running.size} tasks`, true);
      return;
    }
    const controller = new AbortController();
    const entry = { controller, capability: a.capability, session };
    this.running.set(taskId, entry);
    const deadline = toMillis(a.deadline);
    const deadlineTimer = deadline
      ? setTimeout(() => controller.abort('deadline passed'), Math.min(2 ** 31 - 1, Math.max(0, deadline - Date.now())))
      : null;
    const started = Date.now();
    const task = {
      id: taskId,
      attempt: a.attempt,
      correlationId: a.correlationId,
      deadline,
      signal: controller.signal,
      progress: (percent, message = '') => {
        if (controller.signal.aborted) return;
        const pct = Math.max(0, Math.min(100, percent));
        if (this.send(session, { progress: { taskId, percent: pct, message } }) && this.config.verbose) {
          log('progress', { task_id: taskId, percent: Number(pct.toFixed(1)), message }, 'debug');
        }
      },
    };
    Promise.resolve()
      .then(() => capability.run(fromValue(a.input), task))
      .then(
        (output) => {
          if (controller.signal.aborted) return;
          log('result', { task_id: taskId, ms: Date.now() - started });
          this.send(session, { result: { taskId, output: toValue(output) } });
        },
        (err) => {
          if (controller.signal.aborted) {
            log('task_stopped', { task_id: taskId, why: String(controller.signal.reason) });
            return;
          }
          if (err instanceof AgentError) fail(err.reason, err.message, err.retryable);
          else fail('AGENT_ERROR', String((err && err.message) || err), false);
        },
      )
      .finally(() => {
        clearTimeout(deadlineTimer);
        if (this.running.get(taskId) === entry) this.running.delete(taskId);
      });
  }

  onCancel(cancel) {
    const entry = this.running.get(cancel.taskId);
    if (!entry) {
      log('cancel_unknown', { task_id: cancel.taskId });
      return;
    }
    log('cancel', { task_id: cancel.taskId, capability: entry.capability });
    // Free the slot now: the server no longer counts the task against us.
    this.running.delete(cancel.taskId);
    entry.controller.abort('cancelled');
  }

  stopTasks(why, session = null) {
    for (const [taskId, entry] of this.running) {
      if (session && entry.session !== session) continue;
      this.running.delete(taskId);
      entry.controller.abort(why);
    }
  }

  onClosed(session, status) {
    if (session.closed) return;
    session.closed = true;
    clearTimeout(session.welcomeTimer);
    clearInterval(session.heartbeat);
    // The server re-queues (or fails) what we were running; results sent on a
    // later session would not be ours to send.
    this.stopTasks('stream closed', session);
    const fields = { code: status.code, details: status.details, agent_id: session.agentId || null };
    log('stream_closed', fields, status.code === grpc.status.OK ? 'info' : 'warn');
    if (this.stopping) {
      this.exit(0);
      return;
    }
    if (FATAL_CODES.has(status.code)) {
      log('fatal', { ...fields, why: 'the server refused this agent; not reconnecting' }, 'error');
      this.exit(2);
      return;
    }
    if (!session.welcomed) this.failures += 1;
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(this.failures, 10));
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    log('reconnect_scheduled', { in_ms: delay, failures: this.failures });
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  shutdown(signal) {
    if (this.stopping) return;
    this.stopping = true;
    log('shutdown', { signal });
    clearTimeout(this.reconnectTimer);
    this.stopTasks(`shutdown (${signal})`);
    const session = this.session;
    if (!session || session.closed) {
      this.exit(0);
      return;
    }
    clearInterval(session.heartbeat);
    clearTimeout(session.welcomeTimer);
    // Half-close: the server sees the end of our stream, finishes its side
    // and 'status' arrives (onClosed exits). Do not wait forever for it.
    try {
      session.call.end();
    } catch (err) {
      log('end_failed', { error: String(err) }, 'warn');
    }
    setTimeout(() => {
      log('shutdown_timeout', { after_ms: SHUTDOWN_GRACE_MS }, 'warn');
      session.call.cancel();
      this.exit(0);
    }, SHUTDOWN_GRACE_MS).unref();
  }

  exit(code) {
    if (this.exited) return;
    this.exited = true;
    log('exit', { code });
    try {
      this.client.close();
    } catch (_) {
      // closing is best effort
    }
    process.exitCode = code;
    // Let stderr/stdout drain, then leave even if a handle lingers.
    setTimeout(() => process.exit(code), 50).unref();
  }
}

function main() {
  let config;
  try {
    config = parseArgs(process.argv.slice(2), process.env);
  } catch (err) {
    process.stderr.write(`${err.message}\n\n${USAGE}`);
    process.exit(64);
  }
  if (config.help) {
    process.stdout.write(USAGE);
    return;
  }
  logName = config.name;
  const AgentService = loadService(config.protoRoot);
  if (config.check) {
    const client = new AgentService(config.target, credentials(config));
    client.close();
    process.stdout.write(`OK ${Object.keys(CAPABILITIES).join(' ')}\n`);
    return;
  }
  const agent = new RemoteAgent(config, AgentService);
  process.on('SIGTERM', () => agent.shutdown('SIGTERM'));
  process.on('SIGINT', () => agent.shutdown('SIGINT'));
  log('start', {
    target: config.target,
    max_concurrency: config.maxConcurrency,
    weight: config.weight,
    capabilities: Object.keys(CAPABILITIES),
    auth: config.apiKey ? 'api-key' : 'none',
    tls: Boolean(config.tlsCa || config.tls),
  });
  agent.start();
}

if (require.main === module) main();

module.exports = { toValue, fromValue, toStruct, fromStruct, toMillis, CAPABILITIES, parseArgs, AgentError };
