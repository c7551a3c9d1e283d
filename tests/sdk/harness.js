// Drives a real Layer SDK, unmodified, against a live gateway (tests/test_layer_sdks.py).
//
//   node harness.js websdk|xdk CONFIG_JSON
//
// CONFIG_JSON: {"url", "websocketUrl", "appId", "providerId", "keyPem", "kid", "userId",
//               "ios": {...}, "android": {...}}
// Prints one JSON line per step and waits for a line on stdin before the next,
// so that the test can look at the database in between. The shims are what
// React Native apps give the SDKs: XMLHttpRequest (xhr2), WebSocket (ws), and
// getNativeSupport; each request is recorded with its status.
'use strict';

const readline = require('readline');
const jws = require('jws');
const Xhr2 = require('xhr2');
const WS = require('ws');

const [sdk, rawConfig] = process.argv.slice(2);
const config = JSON.parse(rawConfig);
const requests = [];

function emit(step, extra) {
  process.stdout.write(JSON.stringify(Object.assign({ step }, extra || {})) + '\n');
}

function fail(message) {
  emit('error', { message: String(message), requests });
  process.exit(1);
}

process.on('uncaughtException', (err) => fail(err && err.stack ? err.stack : err));
// One bound for the whole run: an SDK waiting for something that never comes
// fails the test instead of hanging it.
setTimeout(() => fail('timed out'), 60000).unref();

class RecordingXhr extends Xhr2 {
  open(method, url, ...rest) {
    this._record = { method: String(method).toUpperCase(), url: String(url), headers: {} };
    return super.open(method, url, ...rest);
  }

  setRequestHeader(name, value) {
    this._record.headers[name] = value;
    return super.setRequestHeader(name, value);
  }

  send(body) {
    const record = this._record;
    record.body = body === undefined || body === null ? null : String(body);
    this.addEventListener('loadend', () => {
      record.status = this.status;
      requests.push(record);
    });
    return super.send(body);
  }
}

class RecordingWebSocket extends WS {
  constructor(url, protocols) {
    super(url, protocols);
    const record = { method: 'WEBSOCKET', url: String(url), headers: {}, body: null, status: null };
    requests.push(record);
    this.on('open', () => { record.status = 101; });
    this.on('error', (err) => {
      const match = /Unexpected server response: (\d+)/.exec(String(err && err.message));
      record.status = match ? Number(match[1]) : 0;
    });
  }
}

global.window = global;
global.XMLHttpRequest = RecordingXhr;
global.WebSocket = RecordingWebSocket;
global.getNativeSupport = (name) => {
  switch (name) {
    case 'atob': return (text) => Buffer.from(text, 'base64').toString('binary');
    case 'btoa': return (text) => Buffer.from(text, 'binary').toString('base64');
    case 'setImmediate': return setImmediate;
    default: return undefined;
  }
};

// What an app's backend does when the SDK asks: sign an identity token for
// the nonce with the provider's private key, as Layer's guide shows with jws.
function identityToken(nonce) {
  const now = Math.floor(Date.now() / 1000);
  return jws.sign({
    header: { typ: 'JWS', alg: 'RS256', cty: 'layer-eit;v=1', kid: config.kid },
    payload: { iss: config.providerId, prn: config.userId, iat: now, exp: now + 600, nce: nonce },
    secret: config.keyPem,
  });
}

function makeClient() {
  const options = { appId: config.appId, url: config.url, websocketUrl: config.websocketUrl };
  if (sdk === 'websdk') {
    const layer = require('layer-websdk');
    return new layer.Client(options);
  }
  const Layer = require('@layerhq/web-xdk/index-core');
  return Layer.init(options);
}

const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on('line', () => { const next = waiting.shift(); if (next) next(); });
function proceed() { return new Promise((resolve) => waiting.push(resolve)); }

// The SDKs answer push-token calls with the response body: '' on success, a
// LayerError otherwise.
function pushCall(call) {
  return new Promise((resolve, reject) => {
    call((data) => {
      if (data && typeof data === 'object') reject(new Error(`refused: ${JSON.stringify(data)}`));
      else resolve();
    });
  });
}

async function main() {
  const client = makeClient();
  const ready = new Promise((resolve, reject) => {
    client.on('challenge', (evt) => {
      emit('challenge', { nonce: evt.nonce });
      evt.callback(identityToken(evt.nonce));
    });
    client.on('authenticated-error', (evt) => reject(new Error(`authentication failed: ${evt.error}`)));
    client.on('ready', resolve);
  });
  client.connect(config.userId);
  await ready;
  emit('session', { session_token: client.sessionToken, user: client.user.userId });
  await proceed();

  await pushCall((done) => client.registerIOSPushToken(config.ios, done));
  emit('ios');
  await proceed();

  await pushCall((done) => client.registerAndroidPushToken(config.android, done));
  emit('android');
  await proceed();

  await pushCall((done) => client.unregisterPushToken(config.ios.deviceId, done));
  emit('unregistered');
  await proceed();

  await new Promise((resolve) => client.logout(resolve));
  emit('logged_out');
  await proceed();

  emit('done', { requests });
  process.exit(0);
}

main().catch(fail);
