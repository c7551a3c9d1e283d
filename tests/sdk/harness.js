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
let challenges = 0;

function emit(step, extra) {
  process.stdout.write(JSON.stringify(Object.assign({ step }, extra || {})) + '\n');
}

function fail(message) {
  emit('error', { message: String(message), requests });
  process.exit(1);
}

// An exception thrown inside one of the SDK's own callbacks is what a browser
// would show on its console; it is recorded and reported, and the run goes on
// (the harness's own failures are rejections of main()).
const sdkErrors = [];
process.on('uncaughtException', (err) => {
  sdkErrors.push(String(err && err.stack ? err.stack : err).split('\n').slice(0, 4).join(' | '));
});
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
    // readystatechange comes before load: an exception in the SDK's own load
    // handler must not lose the record.
    this.addEventListener('readystatechange', () => {
      if (this.readyState !== 4 || record.status !== undefined) return;
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
      challenges += 1;
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

  // The test has ended the session behind the SDK's back: the next call is
  // refused with 401, whose data.nonce starts the SDK's challenge again.
  const reauthenticated = new Promise((resolve) => client.once('authenticated', resolve));
  // ready comes once the SDK has loaded its user again (GET /identities/<user>);
  // the bound only ever elapses when it does not come.
  const readyAgain = Promise.race([
    new Promise((resolve) => client.once('ready', () => resolve(true))),
    new Promise((resolve) => setTimeout(() => resolve(false), 15000).unref()),
  ]);
  const refused = await pushCall((done) => client.registerAndroidPushToken(config.android, done))
    .then(() => null, (err) => err.message);
  if (!refused) throw new Error('a call on an ended session was not refused');
  await reauthenticated;
  await pushCall((done) => client.registerAndroidPushToken(config.android, done));
  const readied = await readyAgain;
  emit('reauthenticated', {
    session_token: client.sessionToken, challenges, refused, ready_again: readied,
    sdk_errors: sdkErrors,
  });
  await proceed();

  await new Promise((resolve) => client.logout(resolve));
  emit('logged_out');
  await proceed();

  emit('done', { requests, sdk_errors: sdkErrors });
  process.exit(0);
}

main().catch(fail);
