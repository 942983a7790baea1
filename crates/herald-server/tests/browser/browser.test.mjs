// Browser tests: the console page and herald.js in headless Chromium against a real herald.
// Run through run.sh (it starts herald and sets HERALD_URL / HERALD_BIN / CHROMIUM).
//
// Connection loss is produced for real, from outside the browser: pages are loaded through a
// small TCP-level proxy in this process that can cut every connection, refuse new ones while
// messages are published straight to herald, and inject server frames (WebSocket close codes,
// duplicate messages). One test also drains a herald node with SIGTERM and restarts it on the
// same port (a new epoch: the in-memory history is gone) to exercise 1012 and resets.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';
import { start as startChat, tokenFor } from '../../../../examples/chat/server.mjs';

const HERALD_BIN = process.env.HERALD_BIN ?? new URL('../../../../target/debug/herald', import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOT = process.env.HERALD_CONSOLE_PNG ?? `${os.tmpdir()}/console.png`;
const WAIT = { timeout: 15_000 };

let heraldUrl = process.env.HERALD_URL;
let ownHerald = null; // started here when run without run.sh
let browser;
let proxy;

// ---- helpers -----------------------------------------------------------------------------------

/** Starts herald; resolves with { child, url } once it printed its address. */
function startHerald(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(HERALD_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => { err += d; });
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/herald listening on (http:\/\/\S+)/);
      if (m) resolve({ child, url: m[1] });
    });
    child.on('exit', (code) => reject(new Error(`herald exited (${code}) before listening: ${err}`)));
  });
}

function stopHerald(child, signal = 'SIGTERM') {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => { child.once('exit', () => resolve()); child.kill(signal); });
}

async function publish(base, channel, data, extra = {}) {
  const r = await fetch(`${base}/v1/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data, ...extra }),
  });
  const body = await r.json();
  assert.equal(r.status, 200, JSON.stringify(body));
  return body;
}

const uniq = (name) => `${name}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

function wsFrame(opcode, payload) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, len])
    : Buffer.from([0x80 | opcode, 126, len >> 8, len & 0xff]);
  return Buffer.concat([head, payload]);
}

/** Forwards `req` to herald at hostname:port; `respond(upstreamResponse)` answers `res`. */
function forward({ hostname, port }, req, res, respond) {
  const up = http.request({ host: hostname, port, method: req.method, path: req.url, headers: req.headers }, respond);
  up.on('error', () => res.destroy());
  res.on('close', () => up.destroy());
  req.pipe(up);
}

/** Tracks a proxy's client sockets in `sockets`, and refuses new ones while `state.gate`. */
function gateConnections(server, state, sockets) {
  server.on('connection', (s) => {
    if (state.gate) return s.destroy();
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
}

/**
 * A proxy in front of herald. `gate` refuses new connections (reset at once: a network error
 * for the browser); cut() drops every open connection; injectText()/injectClose() write a
 * server frame to every proxied WebSocket, as if herald had sent it.
 */
function startProxy(target) {
  const { hostname, port } = new URL(target);
  const state = { gate: false, upgrades: 0, sse: [] };
  const sockets = new Set();
  const tunnels = new Set();
  const server = http.createServer((req, res) => {
    if (req.url.startsWith('/v1/sse')) {
      state.sse.push({ url: req.url, lastEventId: req.headers['last-event-id'] ?? null });
    }
    forward({ hostname, port }, req, res, (ur) => {
      res.writeHead(ur.statusCode, ur.headers);
      ur.pipe(res);
    });
  });
  gateConnections(server, state, sockets);
  server.on('upgrade', (req, sock, head) => {
    state.upgrades += 1;
    const up = net.connect(Number(port), hostname);
    const t = { sock, up };
    tunnels.add(t);
    const done = () => { tunnels.delete(t); sock.destroy(); up.destroy(); };
    up.on('connect', () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(`${raw}\r\n`);
      if (head.length) up.write(head);
      sock.pipe(up);
      up.pipe(sock);
    });
    for (const s of [sock, up]) { s.on('error', done); s.on('close', done); }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}`,
    state,
    cut() { for (const s of sockets) s.destroy(); for (const t of tunnels) { t.sock.destroy(); t.up.destroy(); } },
    injectText(text) { for (const t of tunnels) t.sock.write(wsFrame(0x1, Buffer.from(text))); },
    injectClose(code, reason) {
      const payload = Buffer.concat([Buffer.from([code >> 8, code & 0xff]), Buffer.from(reason)]);
      for (const t of [...tunnels]) {
        t.up.unpipe(t.sock);
        t.sock.unpipe(t.up);
        t.up.destroy();
        t.sock.end(wsFrame(0x8, payload));
        tunnels.delete(t);
      }
    },
    close() { this.cut(); server.closeAllConnections(); server.close(); },
  })));
}

/**
 * A proxy like the corporate gateways that break streaming: it refuses WebSocket upgrades and
 * holds every response until it is complete (so an SSE stream never gets through, while a
 * long-poll answer does). `gate` refuses new connections; cut() drops every open one.
 */
function startBufferingProxy(target) {
  const { hostname, port } = new URL(target);
  const state = { gate: false, upgrades: 0, sse: 0, polls: 0 };
  const sockets = new Set();
  const server = http.createServer((req, res) => {
    if (req.url.startsWith('/v1/sse')) state.sse += 1;
    if (req.url.startsWith('/v1/poll')) state.polls += 1;
    forward({ hostname, port }, req, res, (ur) => {
      const chunks = [];
      ur.on('data', (c) => chunks.push(c));
      ur.on('end', () => {
        const body = Buffer.concat(chunks);
        const headers = { ...ur.headers, 'content-length': body.length };
        delete headers['transfer-encoding'];
        res.writeHead(ur.statusCode, headers);
        res.end(body);
      });
    });
  });
  gateConnections(server, state, sockets);
  server.on('upgrade', (req, sock) => {
    state.upgrades += 1;
    sock.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}`,
    state,
    cut() { for (const s of sockets) s.destroy(); },
    close() { this.cut(); server.closeAllConnections(); server.close(); },
  })));
}

async function newPage(base) {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`${base}/`);
  await page.waitForFunction(() => typeof window.Herald === 'object');
  page.errors = errors;
  return page;
}

// ---- setup -------------------------------------------------------------------------------------

before(async () => {
  if (!heraldUrl) {
    ownHerald = await startHerald(['--listen', '127.0.0.1:0', '--allow-client-publish', 'true', '--sse-retry', '200ms']);
    heraldUrl = ownHerald.url;
  }
  proxy = await startProxy(heraldUrl);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // playwright adds --headless and a fresh temporary --user-data-dir itself.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  proxy?.close();
  // Idle keep-alive sockets to herald would otherwise keep the test process alive.
  http.globalAgent.destroy();
  if (ownHerald) await stopHerald(ownHerald.child);
});

// ---- tests -------------------------------------------------------------------------------------

test('GET / and /herald.js are served with their types and no-cache', async () => {
  for (const [path, type] of [['/', 'text/html; charset=utf-8'], ['/herald.js', 'text/javascript; charset=utf-8']]) {
    const r = await fetch(`${heraldUrl}${path}`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), type);
    assert.equal(r.headers.get('cache-control'), 'no-cache');
  }
});

test('console: SSE and WebSocket modes show messages published by fetch and by its form', async () => {
  const page = await newPage(heraldUrl);
  assert.equal(await page.title(), 'Herald console');
  const channel = uniq('console');

  // SSE mode (the default).
  await page.fill('#channels', channel);
  await page.fill('#events', 'headline');
  await page.click('#connect');
  await page.waitForSelector('#status[data-state="open"]', WAIT);
  assert.match(await page.textContent('#status-text'), /connected \(SSE\)/);
  await page.waitForSelector(`#log tr.control[data-channel="${channel}"]`, WAIT); // herald.subscribed

  // Published with fetch POST from the page itself.
  const res = await page.evaluate(async (ch) => {
    const r = await fetch('/v1/publish', { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ channel: ch, data: { title: 'from fetch' } }) });
    return r.json();
  }, channel);
  assert.equal(res.offset, 1);
  const row1 = page.locator(`#log tr:not(.control)[data-channel="${channel}"][data-offset="1"]`);
  await row1.waitFor(WAIT);
  const cells1 = await row1.locator('td').allTextContents();
  assert.deepEqual(cells1.slice(1), [channel, '1', res.epoch, 'message', '', '{"title":"from fetch"}']);

  // Published with the console's own form, with an event type.
  await page.fill('#pub-channel', channel);
  await page.fill('#pub-event', 'headline');
  await page.fill('#pub-data', '{"title": "from the form", "n": 2}');
  await page.click('#publish');
  await page.waitForSelector('#publish-result.ok', WAIT);
  const row2 = page.locator(`#log tr:not(.control)[data-channel="${channel}"][data-offset="2"]`);
  await row2.waitFor(WAIT);
  assert.deepEqual((await row2.locator('td').allTextContents()).slice(4), ['headline', '', '{"title":"from the form","n":2}']);

  // A publish error is shown, not thrown.
  await page.fill('#pub-data', 'not json');
  await page.click('#publish');
  await page.waitForSelector('#publish-result.err', WAIT);

  // Markup in data stays text.
  await publish(heraldUrl, channel, { html: '<img src=x onerror="window.pwned=1">' });
  await page.locator(`#log tr[data-offset="3"]`).waitFor(WAIT);
  assert.equal(await page.evaluate(() => window.pwned), undefined);
  assert.equal(await page.locator('#log img').count(), 0);

  // WebSocket mode.
  await page.click('label:has(input[value=ws])'); // switches the live subscription over
  await page.waitForSelector('#status[data-state="open"]', WAIT);
  assert.match(await page.textContent('#status-text'), /connected \(WebSocket\)/);
  await page.waitForFunction((ch) => document.querySelectorAll(`#log tr.control[data-channel="${ch}"]`).length >= 2, channel, WAIT);
  await publish(heraldUrl, channel, { title: 'over websocket' }, { event: 'headline' });
  const row4 = page.locator(`#log tr:not(.control)[data-channel="${channel}"][data-offset="4"]`);
  await row4.waitFor(WAIT);
  assert.deepEqual((await row4.locator('td').allTextContents()).slice(4), ['headline', '', '{"title":"over websocket"}']);

  // The form publishes in WebSocket mode too.
  await page.fill('#pub-data', '{"title": "form, websocket mode"}');
  await page.click('#publish');
  await page.locator(`#log tr:not(.control)[data-channel="${channel}"][data-offset="5"]`).waitFor(WAIT);
  assert.match(await page.textContent('#publish-result'), /published: offset 5/);

  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('herald.js WebSocket: live, publish, then resume after a dropped connection with nothing lost or doubled', async () => {
  const page = await newPage(proxy.url);
  const channel = uniq('ws');
  const first = await page.evaluate((ch) => {
    window.t = { got: [], states: [], subs: [], resets: [], errors: [] };
    const c = Herald.connect('', {
      minDelay: 50, maxDelay: 400,
      onState: (s, i) => t.states.push({ s, code: i.code ?? null }),
      onReset: (chan, info) => t.resets.push(info),
      onError: (e) => t.errors.push(e.message),
    });
    c.on('subscribed', (i) => t.subs.push(i));
    window.client = c;
    return c.subscribe(ch, (m) => t.got.push(m));
  }, channel);
  assert.equal(first.recovered, false);
  assert.equal(first.offset, 0);

  for (let n = 1; n <= 3; n++) await publish(heraldUrl, channel, { n });
  // publish over the socket: resolved by the `published` frame, matched by id
  const pub = await page.evaluate((ch) => client.publish(ch, { n: 4 }), channel);
  assert.equal(pub.offset, 4);
  await page.waitForFunction(() => t.got.length >= 4, null, WAIT);

  // The network goes away: every connection is cut and reconnects are refused for a while.
  proxy.state.gate = true;
  const upgradesBefore = proxy.state.upgrades;
  proxy.cut();
  await page.waitForFunction(() => t.states.filter((x) => x.s === 'reconnecting').length >= 3, null, WAIT);
  for (let n = 5; n <= 8; n++) await publish(heraldUrl, channel, { n });
  assert.equal(await page.evaluate(() => t.got.length), 4, 'nothing can arrive while disconnected');
  proxy.state.gate = false;
  await page.waitForFunction(() => t.got.length >= 8 && client.state === 'open', null, WAIT);
  assert.ok(proxy.state.upgrades > upgradesBefore);
  await publish(heraldUrl, channel, { n: 9 }); // live again after the resume
  await page.waitForFunction(() => t.got.length >= 9, null, WAIT);

  // Client-side dedupe: a replayed offset in the same epoch is dropped.
  const epoch = pub.epoch;
  proxy.injectText(JSON.stringify({ type: 'message', channel, offset: 6, epoch, data: { dup: true } }));
  await publish(heraldUrl, channel, { n: 10 });
  await page.waitForFunction(() => t.got.length >= 10, null, WAIT);

  // Close 4000 (slow consumer) from the server: reconnect and resume what was published meanwhile.
  proxy.state.gate = true;
  proxy.injectClose(4000, 'slow consumer: reconnect and resume');
  await page.waitForFunction(() => t.states.some((x) => x.s === 'reconnecting' && x.code === 4000), null, WAIT);
  for (let n = 11; n <= 12; n++) await publish(heraldUrl, channel, { n });
  proxy.state.gate = false;
  await page.waitForFunction(() => t.got.length >= 12 && client.state === 'open', null, WAIT);

  const t = await page.evaluate(() => window.t);
  assert.deepEqual(t.got.map((m) => m.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 'every message exactly once, in order');
  assert.deepEqual(t.got.map((m) => m.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  assert.ok(t.got.every((m) => m.channel === channel && m.epoch === epoch));
  assert.deepEqual(t.subs.map((s) => [s.recovered, s.offset]), [[false, 0], [true, 4], [true, 10]],
    'resubscribed with since after each reconnect, and the server confirmed a complete resume');
  assert.deepEqual(t.resets, []);

  // Close 1008 (policy): the client stops and does not come back.
  proxy.injectClose(1008, 'policy');
  await page.waitForFunction(() => client.state === 'closed', null, WAIT);
  const upgrades = proxy.state.upgrades;
  await sleep(1500); // maxDelay is 400 ms: a reconnect would have happened by now
  assert.equal(proxy.state.upgrades, upgrades, 'no reconnect after 1008');
  assert.equal(await page.evaluate(() => client.state), 'closed');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('native EventSource: reconnects by itself after the stream is cut and resumes via Last-Event-ID', async () => {
  const page = await newPage(proxy.url);
  const channel = uniq('sse');
  await page.evaluate((ch) => {
    window.s = { got: [], subscribed: [], errors: 0, opens: 0 };
    const es = new EventSource(`/v1/sse?channel=${ch}`);
    es.onmessage = (e) => s.got.push({ id: e.lastEventId, data: JSON.parse(e.data) });
    es.addEventListener('herald.subscribed', (e) => s.subscribed.push(JSON.parse(e.data)));
    es.onerror = () => { s.errors += 1; };
    es.onopen = () => { s.opens += 1; };
    window.es = es;
  }, channel);
  await page.waitForFunction(() => s.subscribed.length === 1, null, WAIT);
  for (let n = 1; n <= 3; n++) await publish(heraldUrl, channel, { n });
  await page.waitForFunction(() => s.got.length >= 3, null, WAIT);
  const lastId = await page.evaluate(() => s.got[2].id);

  proxy.state.gate = true;
  const requestsBefore = proxy.state.sse.length;
  proxy.cut();
  await page.waitForFunction(() => s.errors >= 1, null, WAIT);
  for (let n = 4; n <= 7; n++) await publish(heraldUrl, channel, { n });
  proxy.state.gate = false;
  await page.waitForFunction(() => s.got.length >= 7, null, WAIT);
  await publish(heraldUrl, channel, { n: 8 });
  await page.waitForFunction(() => s.got.length >= 8, null, WAIT);

  const s = await page.evaluate(() => window.s);
  assert.deepEqual(s.got.map((m) => m.data.n), [1, 2, 3, 4, 5, 6, 7, 8]);
  const resumed = proxy.state.sse.slice(requestsBefore);
  assert.equal(resumed.length, 1, 'one reconnect request reached the server');
  assert.equal(resumed[0].lastEventId, lastId, 'the browser sent the last id back as Last-Event-ID');
  assert.equal(s.subscribed.at(-1).recovered, true);
  assert.equal(s.subscribed.at(-1).offset, 3);
  await page.evaluate(() => es.close());

  // A page that stored the id resumes with ?last_event_id= on a brand new EventSource.
  const stored = s.got.at(-1).id;
  for (let n = 9; n <= 10; n++) await publish(heraldUrl, channel, { n });
  await page.evaluate(({ ch, id }) => {
    window.s2 = { got: [], subscribed: [] };
    const es = new EventSource(`/v1/sse?channel=${ch}&last_event_id=${encodeURIComponent(id)}`);
    es.onmessage = (e) => s2.got.push(JSON.parse(e.data).n);
    es.addEventListener('herald.subscribed', (e) => s2.subscribed.push(JSON.parse(e.data)));
    window.es2 = es;
  }, { ch: channel, id: stored });
  await page.waitForFunction(() => s2.got.length >= 2, null, WAIT);
  await sleep(200);
  const s2 = await page.evaluate(() => window.s2);
  assert.deepEqual(s2.got, [9, 10]);
  assert.deepEqual(s2.subscribed.map((x) => [x.recovered, x.offset]), [[true, 8]]);
  await page.evaluate(() => es2.close());
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('Herald.sse: channel and offset per message across two channels, resume after a cut', async () => {
  const page = await newPage(proxy.url);
  const a = uniq('a');
  const b = uniq('b');
  await page.evaluate(({ a, b }) => {
    window.h = { got: [], subs: [], resets: [], states: [] };
    window.stream = Herald.sse('', [a, b], {
      events: ['headline'],
      onMessage: (m) => h.got.push(m),
      onSubscribed: (i) => h.subs.push(i),
      onReset: (c, i) => h.resets.push(i),
      onState: (st) => h.states.push(st),
    });
  }, { a, b });
  await page.waitForFunction(() => h.subs.length === 2, null, WAIT);
  await publish(heraldUrl, a, { k: 'a1' });
  await publish(heraldUrl, b, { k: 'b1' }, { event: 'headline' });
  await publish(heraldUrl, a, { k: 'a2' });
  await page.waitForFunction(() => h.got.length >= 3, null, WAIT);

  proxy.state.gate = true;
  proxy.cut();
  await page.waitForFunction(() => h.states.includes('reconnecting'), null, WAIT);
  await publish(heraldUrl, b, { k: 'b2' });
  await publish(heraldUrl, a, { k: 'a3' });
  proxy.state.gate = false;
  await page.waitForFunction(() => h.got.length >= 5, null, WAIT);

  const h = await page.evaluate(() => window.h);
  // Order is per channel; a resume replays channel by channel.
  const seen = (ch) => h.got.filter((m) => m.channel === ch).map((m) => [m.offset, m.event, m.data.k]);
  assert.equal(h.got.length, 5);
  assert.deepEqual(seen(a), [[1, 'message', 'a1'], [2, 'message', 'a2'], [3, 'message', 'a3']]);
  assert.deepEqual(seen(b), [[1, 'headline', 'b1'], [2, 'message', 'b2']]);
  assert.deepEqual(h.subs.slice(2).map((i) => i.recovered), [true, true]);
  assert.deepEqual(h.resets, []);
  const token = await page.evaluate(() => stream.lastEventId());
  assert.equal(parseTokenInNode(token).get(a).offset, 3);
  await page.evaluate(() => stream.close());
  assert.deepEqual(page.errors, []);
  await page.close();
});

function parseTokenInNode(token) {
  return new Map(token.split(';').map((e) => e.split(',')).map(([epoch, offset, ch]) => [ch, { epoch, offset: Number(offset) }]));
}

test('drain (close 1012) and restart with a new epoch: clients come back and report the reset', async () => {
  const args = ['--allow-client-publish', 'true', '--sse-retry', '200ms', '--drain-window', '300ms'];
  let node = await startHerald(['--listen', '127.0.0.1:0', ...args]);
  const port = new URL(node.url).port;
  const channel = uniq('drain');
  const page = await newPage(node.url);
  await page.evaluate((ch) => {
    window.d = { ws: [], wsStates: [], wsResets: [], sse: [], sseResets: [], sseReconnect: [], sseStates: [] };
    window.client = Herald.connect('', {
      minDelay: 50, maxDelay: 400,
      onState: (s, i) => d.wsStates.push({ s, code: i.code ?? null }),
      onReset: (c, info) => d.wsResets.push(info),
    });
    client.subscribe(ch, (m) => d.ws.push(m));
    window.stream = Herald.sse('', [ch], {
      minDelay: 50, maxDelay: 400,
      onMessage: (m) => d.sse.push(m),
      onReset: (c, info) => d.sseResets.push(info),
      onReconnect: (info) => d.sseReconnect.push(info),
      onState: (st) => d.sseStates.push(st),
    });
  }, channel);
  await page.waitForFunction(() => client.state === 'open' && d.sseStates.includes('open'), null, WAIT);
  // SSE subscriptions are live once `open` fired; the WebSocket one once `subscribed` arrived.
  await page.waitForFunction((ch) => client.position(ch) !== null, channel, WAIT);
  const before = await publish(node.url, channel, { n: 1 });
  await publish(node.url, channel, { n: 2 });
  await page.waitForFunction(() => d.ws.length >= 2 && d.sse.length >= 2, null, WAIT);

  await stopHerald(node.child, 'SIGTERM'); // drains: 1012 for WebSockets, herald.reconnect for SSE
  await page.waitForFunction(() => d.wsStates.some((x) => x.code === 1012), null, WAIT);
  node = await startHerald(['--listen', `127.0.0.1:${port}`, ...args]);
  try {
    await page.waitForFunction(() => d.wsResets.length >= 1 && d.sseResets.length >= 1, null, WAIT);
    const after = await publish(node.url, channel, { n: 'new' });
    assert.notEqual(after.epoch, before.epoch);
    assert.equal(after.offset, 1);
    // Offset 1 is below what the clients saw, but in a new epoch: it must not be deduped away.
    await page.waitForFunction(() => d.ws.length >= 3 && d.sse.length >= 3, null, WAIT);
    const d = await page.evaluate(() => window.d);
    assert.deepEqual(d.sseReconnect.map((x) => x.code), ['draining']);
    for (const reset of [d.wsResets[0], d.sseResets[0]]) {
      assert.equal(reset.recovered, false);
      assert.equal(reset.previous.epoch, before.epoch);
      // The restarted node has no history for the channel: no epoch until the next publish
      // creates one, whose first message then follows without another reset.
      assert.equal(reset.epoch, '');
    }
    assert.deepEqual(d.ws.map((m) => [m.epoch === after.epoch, m.offset]), [[false, 1], [false, 2], [true, 1]]);
    assert.deepEqual(d.sse.map((m) => [m.epoch === after.epoch, m.offset]), [[false, 1], [false, 2], [true, 1]]);
    assert.deepEqual(page.errors, []);
    await page.evaluate(() => { client.close(); stream.close(); });
  } finally {
    await page.close();
    await stopHerald(node.child, 'SIGKILL');
  }
});

test('herald.js with a token function: authenticates, reconnects with a fresh token after expiry (4401), resumes, refreshes', async () => {
  const secret = 'browser-test-secret-0123456789abcdef';
  const node = await startHerald(['--listen', '127.0.0.1:0', '--jwt-secret', secret, '--jwt-leeway', '0s']);
  // Tokens come from `herald token`, as a development backend would mint them.
  const mint = (sub, ttl) => new Promise((resolve, reject) => {
    execFile(HERALD_BIN, ['token', '--sub', sub, '--channels', 'auth.*', '--ttl', ttl],
      { env: { ...process.env, HERALD_JWT_SECRET: secret } },
      (err, out) => (err ? reject(err) : resolve(out.trim())));
  });
  const channel = `auth.${uniq('t')}`;
  const page = await newPage(node.url);
  try {
    await page.exposeFunction('mintToken', (sub, ttl) => mint(sub, ttl));
    await page.evaluate((ch) => {
      window.a = { got: [], states: [], errors: [], minted: 0 };
      window.client = Herald.connect('', {
        minDelay: 50, maxDelay: 400,
        // The first token lives 2 s; later ones an hour.
        token: () => window.mintToken('ann', a.minted++ === 0 ? '2s' : '1h'),
        onState: (s, i) => a.states.push({ s, code: i.code ?? null }),
        onError: (e) => a.errors.push(e.message),
      });
      return client.subscribe(ch, (m) => a.got.push(m));
    }, channel);
    await publish(node.url, channel, { n: 1 });
    await page.waitForFunction(() => a.got.length >= 1, null, WAIT);
    // No refresh: the server closes with 4401 at exp; the client asks for a new token.
    await page.waitForFunction(() => a.states.some((x) => x.code === 4401), null, WAIT);
    for (let n = 2; n <= 3; n++) await publish(node.url, channel, { n });
    await page.waitForFunction(() => a.got.length >= 3 && client.state === 'open', null, WAIT);
    const refreshed = await page.evaluate(() => client.refresh());
    assert.equal(refreshed.type, 'authenticated');
    assert.equal(refreshed.sub, 'ann');
    const other = await mint('bob', '1h');
    const refused = await page.evaluate((t) => client.refresh(t).then(() => 'accepted', (e) => e.code), other);
    assert.equal(refused, 'forbidden', 'a token of another user is refused');
    await publish(node.url, channel, { n: 4 });
    await page.waitForFunction(() => a.got.length >= 4, null, WAIT);
    const a = await page.evaluate(() => window.a);
    assert.deepEqual(a.got.map((m) => m.offset), [1, 2, 3, 4], 'nothing lost or doubled across the expiry');
    assert.ok(a.minted >= 3, `a fresh token per connection and refresh (${a.minted})`);
    assert.deepEqual(page.errors, []);
    await page.evaluate(() => client.close());
  } finally {
    await page.close();
    await stopHerald(node.child, 'SIGKILL');
  }
});

test('herald.js falls back to long-polling when a proxy refuses upgrades and buffers streams', async () => {
  const buffering = await startBufferingProxy(heraldUrl);
  const page = await newPage(buffering.url);
  const channel = uniq('fallback');
  try {
    await page.evaluate((ch) => {
      window.f = { got: [], states: [], fallbacks: [], subs: [], resets: [] };
      window.client = Herald.connect('', {
        fallbackAfter: 1000, minDelay: 50, maxDelay: 200, pollTimeout: 2000,
        onState: (s, i) => f.states.push({ s, transport: i.transport ?? null }),
        onReset: (c, info) => f.resets.push(info),
      });
      client.on('fallback', (e) => f.fallbacks.push(e));
      client.on('subscribed', (i) => f.subs.push(i));
      client.subscribe(ch, (m) => f.got.push(m));
    }, channel);
    // WebSocket is refused, SSE never delivers a byte: polling takes over by itself.
    await page.waitForFunction(() => client.transport === 'poll' && f.subs.length >= 1, null, WAIT);
    const fallbacks = await page.evaluate(() => f.fallbacks);
    assert.deepEqual(fallbacks, [{ from: 'websocket', to: 'sse' }, { from: 'sse', to: 'poll' }]);
    assert.ok(buffering.state.upgrades >= 1 && buffering.state.sse >= 1, JSON.stringify(buffering.state));

    for (let n = 1; n <= 5; n++) await publish(heraldUrl, channel, { n });
    await page.waitForFunction(() => f.got.length >= 5, null, WAIT);

    // The network drops for a while; what is published meanwhile arrives after it, once.
    buffering.state.gate = true;
    buffering.cut();
    await page.waitForFunction(() => f.states.some((x) => x.s === 'reconnecting'), null, WAIT);
    for (let n = 6; n <= 8; n++) await publish(heraldUrl, channel, { n });
    buffering.state.gate = false;
    await page.waitForFunction(() => f.got.length >= 8, null, WAIT);
    await publish(heraldUrl, channel, { n: 9 }, { event: 'late' });
    await page.waitForFunction(() => f.got.length >= 9, null, WAIT);

    const f = await page.evaluate(() => window.f);
    assert.deepEqual(f.got.map((m) => m.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9], 'every message exactly once, in order');
    assert.deepEqual(f.got.map((m) => m.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.equal(f.got[8].event, 'late');
    assert.deepEqual(f.resets, []);
    assert.ok(f.states.some((x) => x.s === 'open' && x.transport === 'poll'));
    assert.ok(buffering.state.polls >= 3);
    // Publishing needs the WebSocket.
    const refused = await page.evaluate(() => client.publish('x', 1).then(() => 'sent', (e) => e.message));
    assert.match(refused, /needs the WebSocket transport/);
    assert.deepEqual(page.errors, []);
    await page.evaluate(() => client.close());
  } finally {
    await page.close();
    buffering.close();
  }
});

test('herald.js falls back to long-polling with a token function on a secured node', async () => {
  const secret = 'browser-test-secret-0123456789abcdef';
  const node = await startHerald(['--listen', '127.0.0.1:0', '--jwt-secret', secret]);
  const buffering = await startBufferingProxy(node.url);
  const channel = `auth.${uniq('poll')}`;
  const page = await newPage(buffering.url);
  try {
    await page.exposeFunction('mintToken', () => new Promise((resolve, reject) => {
      execFile(HERALD_BIN, ['token', '--sub', 'pat', '--channels', 'auth.*', '--ttl', '1h'],
        { env: { ...process.env, HERALD_JWT_SECRET: secret } },
        (err, out) => (err ? reject(err) : resolve(out.trim())));
    }));
    await page.evaluate((ch) => {
      window.p = { got: [], errors: [] };
      window.client = Herald.connect('', {
        fallbackAfter: 1000, minDelay: 50, maxDelay: 200, pollTimeout: 2000,
        token: () => window.mintToken(),
        onError: (e) => p.errors.push(e.message),
      });
      client.subscribe(ch, (m) => p.got.push(m));
    }, channel);
    await page.waitForFunction(() => client.transport === 'poll' && client.state === 'open', null, WAIT);
    for (let n = 1; n <= 3; n++) await publish(node.url, channel, { n });
    await page.waitForFunction(() => p.got.length >= 3, null, WAIT);
    const p = await page.evaluate(() => window.p);
    assert.deepEqual(p.got.map((m) => m.data.n), [1, 2, 3]);
    // The node refuses polls without a token: what the client sent was the minted one.
    const bare = await fetch(`${node.url}/v1/poll?channel=${channel}&timeout=0`);
    assert.equal(bare.status, 401);
    assert.deepEqual(page.errors, []);
    await page.evaluate(() => client.close());
  } finally {
    await page.close();
    buffering.close();
    await stopHerald(node.child, 'SIGKILL');
  }
});

// ---- rooms: the chat example and the console's member list -------------------------------------

const CHAT_CONFIG = new URL('../../../../examples/chat/herald.toml', import.meta.url).pathname;
const CHAT_SECRET = 'chat-example-development-secret-not-for-production';

/** A herald node with the chat example's configuration and a short leave grace. */
function startChatHerald() {
  return startHerald(['--config', CHAT_CONFIG, '--listen', '127.0.0.1:0', '--leave-grace', '300ms']);
}

/** The names in a page's member list. */
const members = (page) => page.$$eval('#members li', (lis) => lis.map((li) => li.dataset.user).sort());

test('chat example: two pages in one room see each other, talk, DM, and one leaving shows on the other', async () => {
  const node = await startChatHerald();
  const chat = await startChat({ port: 0, herald: node.url });
  const room = uniq('room').replace(/[^A-Za-z0-9_-]/g, '');
  const open = async (user) => {
    const page = await browser.newPage();
    page.errors = [];
    page.on('pageerror', (e) => page.errors.push(e));
    await page.goto(`${chat.url}/?user=${user}&room=${room}`);
    await page.waitForSelector(`#rooms li.current[data-room="${room}"]`, WAIT);
    return page;
  };
  const alice = await open('alice');
  const bob = await open('bob');
  try {
    // Each sees both in the member list (presence, then join events).
    for (const page of [alice, bob]) {
      await page.waitForFunction(() => [...document.querySelectorAll('#members li')].map((li) => li.dataset.user).sort().join() === 'alice,bob', null, WAIT);
    }
    assert.deepEqual(await members(alice), ['alice', 'bob']);
    // A room message, published over alice's WebSocket, reaches bob with alice as its sender.
    await alice.fill('#text', 'hello bob');
    await alice.press('#text', 'Enter');
    await bob.waitForFunction(() => [...document.querySelectorAll('#log li')].some((li) => li.textContent === 'alicehello bob'), null, WAIT);
    await bob.fill('#text', 'hi alice');
    await bob.press('#text', 'Enter');
    await alice.waitForFunction(() => [...document.querySelectorAll('#log li')].some((li) => li.textContent === 'bobhi alice'), null, WAIT);
    // A private message through the app's backend, to every tab of bob.
    await alice.click('#members li[data-user="bob"] button');
    await alice.fill('#text', 'just for you');
    await alice.press('#text', 'Enter');
    await bob.waitForFunction(() => [...document.querySelectorAll('#log li.dm')].some((li) => li.textContent === 'alice(private) just for you'), null, WAIT);
    // Bob closes his page: after the grace, alice is told and her list shrinks.
    await bob.close();
    await alice.waitForFunction(() => [...document.querySelectorAll('#log li.system')].some((li) => li.textContent === 'bob left'), null, WAIT);
    await alice.waitForFunction(() => [...document.querySelectorAll('#members li')].map((li) => li.dataset.user).join() === 'alice', null, WAIT);
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  } finally {
    if (!bob.isClosed()) await bob.close();
    await alice.close();
    await chat.close();
    await stopHerald(node.child, 'SIGKILL');
  }
});

test('console: a room\'s members shown live, messages with their sender', async () => {
  const node = await startChatHerald();
  const channel = `chat:${uniq('c')}`;
  const page = await newPage(node.url);
  let other = null;
  try {
    await page.fill('#channels', channel);
    await page.fill('#token', tokenFor('carol', CHAT_SECRET));
    await page.click('label:has(input[value=ws])');
    await page.click('#connect');
    await page.waitForSelector('#members li[data-user="carol"]', WAIT);
    // Someone else enters, over herald.js in another page; the console's list follows.
    other = await newPage(node.url);
    await other.evaluate(([ch, token]) => {
      window.c = Herald.connect('', { token });
      return c.subscribe(ch).then(() => c.publish(ch, { text: 'hi from dan' }));
    }, [channel, tokenFor('dan', CHAT_SECRET)]);
    await page.waitForSelector('#members li[data-user="dan"]', WAIT);
    const row = page.locator('#log tr:not(.control)', { hasText: 'hi from dan' });
    await row.waitFor(WAIT);
    assert.equal((await row.locator('td').allTextContents())[5], 'dan', 'the from column');
    // The console itself sends over its WebSocket, as carol.
    await page.fill('#pub-channel', channel);
    await page.fill('#pub-data', '{"text":"hello from the console"}');
    await page.click('#publish-ws');
    await page.waitForSelector('#publish-result.ok', WAIT);
    await other.close();
    other = null;
    await page.waitForFunction(() => !document.querySelector('#members li[data-user="dan"]'), null, WAIT);
    // SSE mode sends the token too (the chat namespace is readable with a token only), and
    // shows the room's joins.
    await page.click('#disconnect');
    await page.click('label:has(input[value=sse])');
    await page.click('#connect');
    await page.waitForFunction(() => document.querySelector('#status-text').textContent === 'connected (SSE)', null, WAIT);
    other = await newPage(node.url);
    await other.evaluate(([ch, token]) => {
      window.c = Herald.connect('', { token });
      return c.subscribe(ch);
    }, [channel, tokenFor('eve', CHAT_SECRET)]);
    await page.locator('#log tr', { hasText: 'eve' }).first().waitFor(WAIT);
    assert.deepEqual(page.errors, []);
  } finally {
    if (other) await other.close();
    await page.close();
    await stopHerald(node.child, 'SIGKILL');
  }
});

test('herald.js over SSE and long-polling (helpers and Herald.connect): a room\'s joins, leaves and the sender of messages', async () => {
  const node = await startChatHerald();
  const room = `chat:${uniq('fb')}`;
  const page = await newPage(node.url);
  let other = null;
  try {
    await page.evaluate(([ch, token]) => {
      window.r = { sse: [], poll: [], subscribed: 0 };
      const handlers = (list) => ({
        token,
        onSubscribed: () => { r.subscribed += 1; },
        onMessage: (m) => list.push(['message', m.from, m.info && m.info.name, m.data.text]),
        onJoin: (m) => list.push(['join', m.user, m.info && m.info.name, m.channel]),
        onLeave: (m) => list.push(['leave', m.user, m.info && m.info.name, m.channel]),
      });
      window.s = Herald.sse('', [ch], handlers(r.sse));
      window.p = Herald.poll('', [ch], { ...handlers(r.poll), timeout: 2000, minDelay: 50 });
      // The client, started on each fallback transport: the same handlers as over WebSocket.
      window.clients = ['sse', 'poll'].map((t) => {
        const list = r[`client-${t}`] = [];
        const h = handlers(list);
        const client = Herald.connect('', { token, transports: [t], pollTimeout: 2000, minDelay: 50 });
        client.on('subscribed', h.onSubscribed);
        client.subscribe(ch, h.onMessage, { onJoin: h.onJoin, onLeave: h.onLeave });
        return client;
      });
    }, [room, tokenFor('erin', CHAT_SECRET)]);
    await page.waitForFunction(() => r.subscribed >= 4, null, WAIT);
    // Dan comes in over WebSocket, says hello, and goes.
    other = await newPage(node.url);
    await other.evaluate(([ch, token]) => {
      window.c = Herald.connect('', { token });
      return c.subscribe(ch).then(() => c.publish(ch, { text: 'hello', from: 'forged' }));
    }, [room, tokenFor('dan', CHAT_SECRET)]);
    await other.close();
    other = null;
    const dans = (list) => list.filter((e) => e[1] === 'dan');
    const kinds = ['sse', 'poll', 'client-sse', 'client-poll'];
    await page.waitForFunction((ks) => ks.every((k) => r[k].some((e) => e[0] === 'leave' && e[1] === 'dan')), kinds, WAIT);
    const r = await page.evaluate(() => window.r);
    const expected = [['join', 'dan', 'dan', room], ['message', 'dan', 'dan', 'hello'], ['leave', 'dan', 'dan', room]];
    assert.deepEqual(dans(r.sse), expected, 'over SSE (envelopes)');
    assert.deepEqual(dans(r.poll), expected, 'over long-polling');
    assert.deepEqual(dans(r['client-sse']), expected, 'Herald.connect over SSE');
    assert.deepEqual(dans(r['client-poll']), expected, 'Herald.connect over long-polling');
    assert.deepEqual(page.errors, []);
    await page.evaluate(() => { s.close(); p.close(); clients.forEach((c) => c.close()); });
  } finally {
    if (other) await other.close();
    await page.close();
    await stopHerald(node.child, 'SIGKILL');
  }
});
