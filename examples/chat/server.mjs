// The chat example's app server: serves the page, mints development tokens, and sends private
// messages through herald's HTTP API. No dependencies (Node >= 18).
//
//   node examples/chat/server.mjs            # http://127.0.0.1:3000, herald at http://127.0.0.1:8080
//   PORT=3001 HERALD_URL=http://127.0.0.1:9000 node examples/chat/server.mjs
//
// What goes through this server: the page and its script, a token for a name (no password:
// development only), and private messages (the browser never holds the API key). Everything
// else (room messages, presence, join/leave) goes straight between the browser and herald.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));

/** The secret and API key of examples/chat/herald.toml, so they are written in one place. */
function devSettings() {
  const toml = fs.readFileSync(`${here}herald.toml`, 'utf8');
  const get = (re) => {
    const m = toml.match(re);
    if (!m) throw new Error(`herald.toml has no ${re}`);
    return m[1];
  };
  return {
    secret: process.env.HERALD_JWT_SECRET ?? get(/^jwt_secret\s*=\s*"([^"]+)"/m),
    apiKey: process.env.CHAT_API_KEY ?? get(/^key\s*=\s*"([^"]+)"/m),
  };
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** An HS256 JWT (what PyJWT or any JWT library makes; docs/security.md). */
export function sign(claims, secret) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const mac = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest();
  return `${head}.${body}.${b64url(mac)}`;
}

/** The claims of a token this server signed, or null. */
function verify(token, secret) {
  const [head, body, mac] = String(token).split('.');
  if (!head || !body || !mac) return null;
  const want = b64url(crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest());
  if (want.length !== mac.length || !crypto.timingSafeEqual(Buffer.from(want), Buffer.from(mac))) return null;
  const claims = JSON.parse(Buffer.from(body, 'base64url').toString());
  return claims.exp > Date.now() / 1000 ? claims : null;
}

const NAME = /^[A-Za-z0-9_-]{1,24}$/;

/** A colour per name, shown next to it (the token's `info` claim carries it to everyone). */
function colour(name) {
  const h = crypto.createHash('sha1').update(name).digest()[0];
  return `hsl(${Math.round((h / 256) * 360)} 60% 42%)`;
}

/** A token for `name`: reads the rooms and its own private channel, publishes to rooms. */
export function tokenFor(name, secret, ttlSeconds = 3600) {
  return sign({
    sub: name,
    exp: Math.floor(Date.now() / 1000) + ttlSeconds,
    channels: ['chat:*', `user:${name}`],
    publish: ['chat:*'],
    info: { name, colour: colour(name) },
  }, secret);
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

const json = (res, status, v) => send(res, status, 'application/json', JSON.stringify(v));

async function readJson(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 16_384) throw new Error('too big');
  }
  return JSON.parse(body);
}

/**
 * Starts the app server. options: port (0: any), herald (herald's base URL as the browser
 * reaches it), heraldApi (as this server reaches it; default the same). Resolves with
 * { url, close() }.
 */
export function start({ port = 3000, host = '127.0.0.1', herald = 'http://127.0.0.1:8080', heraldApi } = {}) {
  const { secret, apiKey } = devSettings();
  const api = (heraldApi ?? herald).replace(/\/+$/, '');
  const files = {
    '/': ['index.html', 'text/html; charset=utf-8'],
    '/chat.js': ['chat.js', 'text/javascript; charset=utf-8'],
  };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    try {
      if (req.method === 'GET' && files[url.pathname]) {
        const [file, type] = files[url.pathname];
        return send(res, 200, type, fs.readFileSync(`${here}${file}`));
      }
      if (req.method === 'GET' && url.pathname === '/config.js') {
        return send(res, 200, 'text/javascript', `window.CHAT = ${JSON.stringify({ herald })};`);
      }
      // Development login: whoever asks for a name gets its token.
      if (req.method === 'GET' && url.pathname === '/token') {
        const name = url.searchParams.get('user') ?? '';
        if (!NAME.test(name)) return json(res, 400, { error: 'a name is 1-24 of A-Z a-z 0-9 _ -' });
        return json(res, 200, { token: tokenFor(name, secret) });
      }
      // A private message: from the token's user to `to`, on all of `to`'s connections (and the
      // sender's other tabs), with one herald publish.
      if (req.method === 'POST' && url.pathname === '/dm') {
        const bearer = (req.headers.authorization ?? '').replace(/^Bearer\s+/i, '');
        const me = verify(bearer, secret);
        if (!me) return json(res, 401, { error: 'log in first' });
        const { to, text } = await readJson(req);
        if (!NAME.test(String(to)) || typeof text !== 'string' || !text.trim() || text.length > 2000) {
          return json(res, 400, { error: 'give `to` (a name) and `text`' });
        }
        const r = await fetch(`${api}/v1/broadcast`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
          body: JSON.stringify({
            channels: [`user:${to}`, `user:${me.sub}`],
            event: 'dm',
            data: { from: me.sub, to, text, info: me.info },
          }),
        });
        return json(res, r.status, await r.json());
      }
      json(res, 404, { error: 'not found' });
    } catch (e) {
      json(res, 400, { error: String(e.message ?? e) });
    }
  });
  return new Promise((resolve) => {
    server.listen(port, host, () => {
      const { port: bound } = server.address();
      resolve({
        url: `http://${host}:${bound}`,
        close: () => new Promise((done) => { server.closeAllConnections(); server.close(done); }),
      });
    });
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === fs.realpathSync(process.argv[1])) {
  const chat = await start({
    port: Number(process.env.PORT ?? 3000),
    herald: process.env.HERALD_URL ?? 'http://127.0.0.1:8080',
  });
  console.log(`chat example on ${chat.url} (herald at ${process.env.HERALD_URL ?? 'http://127.0.0.1:8080'})`);
}
