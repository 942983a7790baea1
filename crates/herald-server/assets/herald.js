/*!
 * herald.js: the browser client for Herald (wire protocol v1), served at /herald.js.
 * No dependencies, no build step: <script src="/herald.js"></script> defines window.Herald.
 *
 *   const client = Herald.connect(undefined, { onState: (s) => console.log(s) });
 *   client.subscribe('news', (msg) => console.log(msg.offset, msg.data));
 *   await client.publish('news', { title: 'hi' });   // needs --allow-client-publish true
 *
 *   // Rooms (docs/client.md): who is here, who comes and goes, who said what.
 *   client.subscribe('chat:lobby', (msg) => console.log(msg.from, msg.data), {
 *     onJoin: (m) => console.log(m.user, 'joined'), onLeave: (m) => console.log(m.user, 'left') });
 *   const { members } = await client.presence('chat:lobby');
 *
 *   const stream = Herald.sse('', ['news'], { onMessage: (msg) => console.log(msg.data) });
 *   const polled = Herald.poll('', ['news'], { onMessage: (msg) => console.log(msg.data) });
 *
 * Herald.connect() falls back by itself: when WebSocket has not delivered anything within
 * `fallbackAfter` (a proxy that refuses upgrades), it subscribes over SSE; when SSE has not
 * either (a proxy that buffers streams), over long-polling (GET /v1/poll), which every proxy
 * passes. The channels, positions and handlers carry over; only publish needs WebSocket.
 *
 *   // With subscriber tokens (docs/security.md): a function is called for every (re)connect,
 *   // so a token that expired (close 4401) is replaced by a fresh one and the channels resume.
 *   Herald.connect(undefined, { token: () => fetch('/my-app/herald-token').then((r) => r.text()) });
 *
 * Delivery is at least once across reconnects, so both clients remember each channel's position
 * ({epoch, offset}), resume from it, and drop anything they have already seen.
 */
(function (root) {
  'use strict';

  // Close codes (docs/api.md). A policy close and an invalid token are final: retrying would be
  // refused again. An expired token (or none) means "reconnect with a new token".
  var CLOSE_POLICY = 1008;
  var CLOSE_UNAUTHORIZED = 4401;
  var CLOSE_FORBIDDEN = 4403;

  function noop() {}

  // Same-origin by default: the console and most apps are served by Herald itself.
  function httpBase(baseUrl) {
    var base = baseUrl || (root.location ? root.location.origin : '');
    return String(base).replace(/\/+$/, '');
  }

  function wsUrl(baseUrl, params) {
    var url = new URL(httpBase(baseUrl) + '/v1/ws', root.location ? root.location.href : undefined);
    if (url.protocol === 'https:') url.protocol = 'wss:';
    else if (url.protocol === 'http:') url.protocol = 'ws:';
    Object.keys(params || {}).forEach(function (k) { url.searchParams.set(k, params[k]); });
    return url.toString();
  }

  // Whether offset `next` of `epoch` comes right after position `pos` (or is before it): the
  // same epoch with nothing skipped, or the first message of a channel seen before it had any
  // (position epoch '', offset 0).
  function continues(pos, epoch, next) {
    if (pos.epoch === epoch) return next <= pos.offset + 1;
    return pos.epoch === '' && pos.offset === 0 && next === 1;
  }

  // A message is a duplicate when it is not past what we already saw *in the same epoch*; a new
  // epoch means the channel's history was reset and offsets start over.
  function isDuplicate(pos, epoch, offset) {
    return pos !== null && pos.epoch === epoch && offset <= pos.offset;
  }

  // Exponential backoff with full jitter: a random delay in [0, min(max, base * 2^attempt)],
  // so thousands of clients dropped at once do not all come back at the same moment.
  function backoff(base, max, attempt) {
    return Math.floor(Math.random() * Math.min(max, base * Math.pow(2, attempt)));
  }

  function Emitter() { this._handlers = {}; }
  Emitter.prototype.on = function (name, fn) {
    (this._handlers[name] = this._handlers[name] || []).push(fn);
    var list = this._handlers[name];
    return function off() { var i = list.indexOf(fn); if (i >= 0) list.splice(i, 1); };
  };
  Emitter.prototype._emit = function (name) {
    var args = Array.prototype.slice.call(arguments, 1);
    (this._handlers[name] || []).slice().forEach(function (fn) {
      // A throwing user handler must not break the socket's frame loop.
      try { fn.apply(null, args); } catch (e) { setTimeout(function () { throw e; }); }
    });
  };

  // ---------------------------------------------------------------------------------------------
  // WebSocket client
  // ---------------------------------------------------------------------------------------------

  /**
   * options: transports (tried in order until one delivers, default ['websocket', 'sse',
   * 'poll']), fallbackAfter (ms a transport has to deliver its first frame or event before the
   * next is tried, default 5000, 0 = never fall back), events (event types to receive over SSE,
   * which cannot listen for "any type"; 'message' always), pollTimeout (ms, default 25000),
   * minDelay (ms, backoff base, default 500), maxDelay (ms, cap, default 30000),
   * heartbeat (ms between liveness checks, default 30000, 0 = off), params (extra query
   * parameters for /v1/ws), token (a subscriber token, or a function returning one or a
   * promise of one, called on every connect: sent as the first frame, {op:'auth'}, never in
   * the URL; over SSE and polling, which cannot send headers or frames, as ?token=), WebSocket
   * (constructor, for tests and polyfills), and the callbacks onState(state, info),
   * onReset(channel, info), onError(err).
   * Events via client.on(): 'state', 'reset', 'subscribed', 'unsubscribed', 'fallback', 'error',
   * and in rooms 'join' and 'leave' ({channel, offset, epoch, user, client, info}).
   * client.transport is the transport in use.
   */
  function Client(baseUrl, options) {
    Emitter.call(this);
    var o = options || {};
    this.url = wsUrl(baseUrl, o.params);
    this.minDelay = o.minDelay != null ? o.minDelay : 500;
    this.maxDelay = o.maxDelay != null ? o.maxDelay : 30000;
    this.heartbeat = o.heartbeat != null ? o.heartbeat : 30000;
    this.WebSocket = o.WebSocket || root.WebSocket;
    this.token = o.token || null;
    this.base = httpBase(baseUrl);
    this.transports = o.transports || ['websocket', 'sse', 'poll'];
    this.transportIndex = 0;
    this.transport = this.transports[0];
    this.fallbackAfter = o.fallbackAfter != null ? o.fallbackAfter : 5000;
    this.fallbackTimer = null;
    this.delivered = false;    // the current transport has delivered: no more falling back
    this.events = o.events || [];
    this.pollTimeout = o.pollTimeout != null ? o.pollTimeout : 25000;
    this.stream = null;        // the SSE or poll helper, on those transports
    this.state = 'idle';
    this.attempt = 0;          // consecutive failed connections, drives the backoff
    this.subs = new Map();     // channel -> { handlers: Set, pos: {epoch, offset} | null, pending }
    this.pending = new Map();  // request id -> { resolve, reject, sent }
    this.outbox = [];          // publishes made while offline, sent once connected
    this.nextId = 1;
    this.ws = null;
    this.timer = null;
    this.beat = null;
    this.closed = false;
    if (o.onState) this.on('state', o.onState);
    if (o.onReset) this.on('reset', o.onReset);
    if (o.onError) this.on('error', o.onError);
    // Do not sit out a long backoff when the network is obviously back.
    var self = this;
    this._online = function () { if (self.state === 'reconnecting') self.reconnect(); };
    if (root.addEventListener) root.addEventListener('online', this._online);
    this._open();
  }
  Client.prototype = Object.create(Emitter.prototype);

  Client.prototype._setState = function (state, info) {
    this.state = state;
    this._emit('state', state, info || {});
  };

  Client.prototype._open = function () {
    clearTimeout(this.timer);
    if (this.attempt === 0) this._setState('connecting'); // else already 'reconnecting'
    this._armFallback();
    if (this.transport !== 'websocket') return this._openStream();
    if (typeof this.token !== 'function') return this._connect(this.token);
    // A fresh token for every connection: the last one may be what expired.
    var self = this;
    Promise.resolve()
      .then(function () { return self.token(); })
      .then(function (token) { if (!self.closed) self._connect(token); }, function (e) {
        self._emit('error', e);
        if (!self.closed) self._scheduleReconnect({ reason: 'token' });
      });
  };

  Client.prototype._connect = function (token) {
    var ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (e) {
      this._emit('error', e);
      return this._scheduleReconnect({});
    }
    this.ws = ws;
    var self = this;
    var lastHeard = Date.now();
    ws.onopen = function () {
      lastHeard = Date.now();
      // Authenticate first: the server handles ops in order, so what follows runs as us.
      if (token) self._request({ op: 'auth', token: String(token) }).catch(noop);
      self._setState('open', {});
      // Resubscribe everything, with our position so the server replays what we missed.
      self.subs.forEach(function (sub, channel) { self._sendSubscribe(channel, sub); });
      // With nothing to subscribe, a pong shows that frames get through (see _armFallback).
      if (!self.delivered && self.subs.size === 0) self._send({ op: 'ping' });
      self.outbox.splice(0).forEach(function (frame) {
        var p = self.pending.get(frame.id);
        if (p && self._send(frame)) p.sent = true;
      });
      // The server's WebSocket pings are invisible to page code, so a half-open connection
      // (laptop sleep, dead NAT entry) is only noticed by asking for a pong ourselves.
      if (self.heartbeat > 0) {
        self.beat = setInterval(function () {
          var silent = Date.now() - lastHeard;
          if (silent > 2 * self.heartbeat) self._drop(4001, 'no pong');
          else if (silent > self.heartbeat) self._send({ op: 'ping' });
        }, self.heartbeat);
      }
    };
    ws.onmessage = function (ev) {
      lastHeard = Date.now();
      // Only a connection that carried traffic counts as a success: a server that accepts and
      // closes at once must not make us retry in a tight loop.
      self._delivered();
      var frame;
      try { frame = JSON.parse(ev.data); } catch (e) { return self._emit('error', e); }
      self._onFrame(frame);
    };
    ws.onclose = function (ev) {
      // A socket we already dropped ourselves (see _drop) was settled then.
      if (self.ws === ws) self._lost({ code: ev.code, reason: ev.reason });
    };
  };

  // The connection is gone: settle what waited on it, then reconnect unless told not to.
  Client.prototype._lost = function (info) {
    this._settle();
    if (this.closed) return this._setState('closed', info);
    // 4401 with a token function: reconnect with a fresh token. A fixed token cannot improve.
    var final = info.code === CLOSE_POLICY || info.code === CLOSE_FORBIDDEN ||
      (info.code === CLOSE_UNAUTHORIZED && typeof this.token !== 'function');
    if (final) {
      var why = 'closed by the server (' + info.code + ')';
      this.closed = true;
      this._rejectQueued(why);
      this._emit('error', new Error(why + ': ' + info.reason));
      return this._setState('closed', info);
    }
    // 1012 (drain/restart), 4000 (slow consumer), 4001 (ping timeout), 4029 (rate limited),
    // network loss: all mean "come back (after the backoff) and resume", which the resubscribe
    // in onopen does.
    this._scheduleReconnect(info);
  };

  // Forgets the socket and settles what waited on it. The outcome of an in-flight publish is
  // unknown; let the caller decide whether to retry (with an idempotencyKey a retry is safe).
  // Requests never sent wait for the next socket.
  Client.prototype._settle = function () {
    clearInterval(this.beat);
    this.ws = null;
    var self = this;
    this.pending.forEach(function (p, id) {
      if (!p.sent) return;
      self.pending.delete(id);
      p.reject(new Error('connection closed before reply'));
    });
    this.subs.forEach(function (sub) { sub.pending = null; });
  };

  // Gives up on the current socket at once rather than waiting for a close handshake that a
  // dead peer will never answer.
  Client.prototype._drop = function (code, reason) {
    var ws = this.ws;
    if (!ws) return;
    this._lost({ code: code, reason: reason });
    try { ws.close(code, reason); } catch (e) { /* already closing */ }
  };

  Client.prototype._rejectQueued = function (why) {
    this.outbox = [];
    this.pending.forEach(function (p) { p.reject(new Error(why)); });
    this.pending.clear();
  };

  Client.prototype._scheduleReconnect = function (info) {
    this.attempt += 1;
    var delay = backoff(this.minDelay, this.maxDelay, this.attempt);
    info.delay = delay;
    info.attempt = this.attempt;
    this._setState('reconnecting', info);
    this.timer = setTimeout(this._open.bind(this), delay);
  };

  Client.prototype._send = function (frame) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  };

  // Sends a frame with a fresh id; the promise settles with the reply that echoes it. Publishes
  // made while offline are queued (queue = true); other ops are redone by onopen anyway.
  Client.prototype._request = function (frame, queue) {
    var self = this;
    frame.id = this.nextId++;
    return new Promise(function (resolve, reject) {
      var entry = { resolve: resolve, reject: reject, sent: false };
      self.pending.set(frame.id, entry);
      if (self._send(frame)) entry.sent = true;
      else if (queue) self.outbox.push(frame);
      else { self.pending.delete(frame.id); reject(new Error('not connected')); }
    });
  };

  Client.prototype._sendSubscribe = function (channel, sub) {
    var frame = { op: 'subscribe', channel: channel };
    if (sub.pos) frame.since = { offset: sub.pos.offset, epoch: sub.pos.epoch };
    var p = this._request(frame);
    sub.pending = p;
    p.catch(noop); // failures are reported through 'error'; a reconnect retries anyway
    return p;
  };

  Client.prototype._onFrame = function (f) {
    var waiter = f.id != null ? this.pending.get(f.id) : undefined;
    if (waiter) this.pending.delete(f.id);
    var sub = f.channel != null ? this.subs.get(f.channel) : undefined;
    switch (f.type) {
      case 'message':
        if (!sub || isDuplicate(sub.pos, f.epoch, f.offset)) return;
        sub.pos = { epoch: f.epoch, offset: f.offset };
        sub.handlers.forEach(function (fn) {
          try { fn(f); } catch (e) { setTimeout(function () { throw e; }); }
        });
        return;
      case 'join':
      case 'leave':
        // Room events are messages of the channel's stream: they have offsets, come in order
        // with the messages, and are replayed on resume like them.
        if (!sub || isDuplicate(sub.pos, f.epoch, f.offset)) return;
        sub.pos = { epoch: f.epoch, offset: f.offset };
        var hook = f.type === 'join' ? sub.onJoin : sub.onLeave;
        if (hook) { try { hook(f); } catch (e) { setTimeout(function () { throw e; }); } }
        this._emit(f.type, f);
        return;
      case 'presence':
      case 'presence_stats':
        if (waiter) waiter.resolve(f);
        return;
      case 'subscribed':
        if (!sub) return;
        var info = { channel: f.channel, epoch: f.epoch, offset: f.offset, recovered: f.recovered,
          previous: sub.pos };
        // recovered:false with a position we asked to resume from (or unprompted, mid-stream)
        // means a gap: the app must reload its state. On a first subscribe there is nothing
        // to recover, so it is not a reset.
        var reset = !f.recovered && (sub.pos !== null || f.id == null);
        sub.pos = { epoch: f.epoch, offset: f.offset };
        this._emit('subscribed', info);
        if (reset) this._emit('reset', f.channel, info);
        if (waiter) waiter.resolve(info);
        return;
      case 'unsubscribed':
        // With a reason, the server ended the subscription (e.g. forbidden after a refresh).
        if (f.reason) {
          this.subs.delete(f.channel);
          this._emit('unsubscribed', f.channel, f.reason);
        }
        if (waiter) waiter.resolve(f);
        return;
      case 'published':
      case 'authenticated':
      case 'pong':
        if (waiter) waiter.resolve(f);
        return;
      case 'error':
        var err = new Error(f.message || f.code);
        err.code = f.code;
        if (waiter) waiter.reject(err);
        this._emit('error', err);
        return;
    }
  };

  /**
   * Subscribes onMessage(frame) to a channel; frame is {channel, offset, epoch, event?, from?,
   * info?, data} (from and info: the user who published it over a WebSocket, set by the server).
   * Returns a promise of the first `subscribed` reply ({channel, epoch, offset, recovered}).
   * opts.since ({epoch, offset}) resumes from a position the app persisted itself; in a room,
   * opts.onJoin(ev) and opts.onLeave(ev) get its join and leave events ({user, client, info}),
   * over every transport.
   */
  Client.prototype.subscribe = function (channel, onMessage, opts) {
    var sub = this.subs.get(channel);
    if (sub) {
      if (onMessage) sub.handlers.add(onMessage);
      if (opts && opts.onJoin) sub.onJoin = opts.onJoin;
      if (opts && opts.onLeave) sub.onLeave = opts.onLeave;
      return sub.pending || Promise.resolve({ channel: channel, epoch: sub.pos && sub.pos.epoch,
        offset: sub.pos && sub.pos.offset, recovered: true });
    }
    sub = { handlers: new Set(onMessage ? [onMessage] : []), pos: (opts && opts.since) || null,
      pending: null, onJoin: opts && opts.onJoin, onLeave: opts && opts.onLeave };
    this.subs.set(channel, sub);
    if (this.ws && this.ws.readyState === 1) return this._sendSubscribe(channel, sub);
    // SSE or polling: the stream is reopened with the new channel among the others.
    if (this.transport !== 'websocket' && !this.closed) {
      this._armFallback();
      this._openStream();
    }
    // Offline (onopen subscribes) or a stream: hand back a promise of the subscription.
    var self = this;
    return new Promise(function (resolve, reject) {
      var off = self.on('subscribed', function (info) {
        if (info.channel === channel) { off(); resolve(info); }
      });
      if (self.closed) reject(new Error('client closed'));
    });
  };

  /** Stops delivery for a channel and forgets its position. */
  Client.prototype.unsubscribe = function (channel) {
    if (!this.subs.delete(channel)) return Promise.resolve();
    if (this.transport !== 'websocket' && !this.closed) {
      this._openStream();
      return Promise.resolve();
    }
    if (!this.ws || this.ws.readyState !== 1) return Promise.resolve();
    return this._request({ op: 'unsubscribe', channel: channel });
  };

  /** The last position seen in a channel ({epoch, offset}) or null: persist it to resume later. */
  Client.prototype.position = function (channel) {
    var sub = this.subs.get(channel);
    return sub && sub.pos ? { epoch: sub.pos.epoch, offset: sub.pos.offset } : null;
  };

  /**
   * Publishes over the socket (the namespace must allow client publish, and with tokens the
   * token's `publish` claim must cover the channel). Resolves with the acknowledgement,
   * {type: 'published', channel, offset, epoch}, once the message is in history; rejects with
   * the server's error (err.code: forbidden, unauthorized, invalid_event, rate_limited, ...).
   * Published while offline, it is sent on reconnect. opts: event, idempotencyKey (makes a
   * retry after a lost connection safe). Subscribers see it with `from` (the token's sub).
   */
  Client.prototype.publish = function (channel, data, opts) {
    var refused = this._needsWebSocket('publish');
    if (refused) return refused;
    var frame = { op: 'publish', channel: channel, data: data };
    if (opts && opts.event) frame.event = opts.event;
    if (opts && opts.idempotencyKey) frame.idempotency_key = opts.idempotencyKey;
    return this._request(frame, true);
  };

  /**
   * Who is in a room the client subscribes to, on every node: resolves with {channel, members:
   * [{user, client, info}], truncated, clients, users}. A big room's listing is capped
   * (truncated: true; the counts stay exact). Needs the WebSocket transport.
   */
  Client.prototype.presence = function (channel) {
    return this._needsWebSocket('presence') || this._request({ op: 'presence', channel: channel });
  };

  /** How many connections and distinct users are in a room: {channel, clients, users}. */
  Client.prototype.presenceStats = function (channel) {
    return this._needsWebSocket('presenceStats') ||
      this._request({ op: 'presence_stats', channel: channel });
  };

  // A rejected promise when `what` cannot be done now: the client is closed, or it fell back to
  // a transport that only receives.
  Client.prototype._needsWebSocket = function (what) {
    if (this.closed) return Promise.reject(new Error('client closed'));
    if (this.transport === 'websocket') return null;
    return Promise.reject(new Error(what + ' needs the WebSocket transport (this client uses ' +
      this.transport + ')'));
  };

  /**
   * Replaces the connection's token before it expires (same `sub`): with no argument the token
   * option (a function) is asked for a new one. Resolves with {type:'authenticated', sub, exp};
   * subscriptions the new token no longer grants end with an 'unsubscribed' event.
   */
  Client.prototype.refresh = function (token) {
    var self = this;
    return Promise.resolve()
      .then(function () {
        if (token) return token;
        if (typeof self.token === 'function') return self.token();
        throw new Error('refresh needs a token (or a token function in the options)');
      })
      .then(function (t) {
        if (typeof self.token !== 'function') self.token = t;
        return self._request({ op: 'refresh', token: String(t) });
      });
  };

  /** Drops the current connection and reconnects now, resuming every channel. */
  Client.prototype.reconnect = function () {
    if (this.closed) return;
    this.attempt = 0;
    if (this.transport !== 'websocket') this._openStream();
    else if (this.ws) this._drop(4999, 'client reconnect');
    else if (this.state === 'reconnecting') this._open();
  };

  /** Closes for good: no reconnect. */
  Client.prototype.close = function () {
    this.closed = true;
    clearTimeout(this.timer);
    if (root.removeEventListener) root.removeEventListener('online', this._online);
    this._rejectQueued('client closed');
    clearTimeout(this.fallbackTimer);
    if (this.stream) {
      this._teardown();
      this._setState('closed', {});
    } else if (this.ws) this._drop(1000, 'client closed');
    else this._setState('closed', {});
  };

  // ---------------------------------------------------------------------------------------------
  // Falling back: SSE, then long-polling, under the same client
  // ---------------------------------------------------------------------------------------------

  // Gives the transport in use `fallbackAfter` ms to deliver (a WebSocket frame, an SSE event, a
  // poll answer). One that does not (a proxy that refuses upgrades, or buffers streams) is
  // abandoned for the next of `transports`. A transport that delivered once is kept: later
  // disconnects are network trouble, which reconnecting handles.
  Client.prototype._armFallback = function () {
    if (this.delivered || this.fallbackTimer || !(this.fallbackAfter > 0)) return;
    if (this.transportIndex >= this.transports.length - 1) return;
    // A stream needs channels: without any, nothing can be delivered yet.
    if (this.transport !== 'websocket' && this.subs.size === 0) return;
    var self = this;
    this.fallbackTimer = setTimeout(function () {
      self.fallbackTimer = null;
      if (!self.delivered && !self.closed) self._fallBack();
    }, this.fallbackAfter);
  };

  Client.prototype._fallBack = function () {
    var from = this.transport;
    this._teardown();
    this.transportIndex += 1;
    this.transport = this.transports[this.transportIndex];
    this.attempt = 0;
    this._emit('fallback', { from: from, to: this.transport });
    this._open();
  };

  Client.prototype._delivered = function () {
    this.attempt = 0;
    if (this.delivered) return;
    this.delivered = true;
    clearTimeout(this.fallbackTimer);
    this.fallbackTimer = null;
  };

  // Ends the current connection or stream without reconnecting.
  Client.prototype._teardown = function () {
    clearTimeout(this.timer);
    var ws = this.ws;
    this._settle();
    if (ws) {
      ws.onclose = null;
      try { ws.close(1000, 'falling back'); } catch (e) { /* already closing */ }
    }
    var stream = this.stream;
    this.stream = null;
    if (stream) stream.close();
  };

  // An SSE stream or a poll loop for every subscribed channel, from the positions held; reopened
  // whenever the set of channels changes.
  Client.prototype._openStream = function () {
    var old = this.stream;
    this.stream = null;
    if (old) old.close();
    var channels = Array.from(this.subs.keys());
    if (channels.length === 0) return this._setState('open', { transport: this.transport });
    var positions = new Map();
    this.subs.forEach(function (sub, channel) { if (sub.pos) positions.set(channel, sub.pos); });
    var self = this;
    var stream = null;
    var current = function () { return self.stream === stream && stream !== null; };
    var handlers = {
      lastEventId: formatToken(positions), events: this.events, timeout: this.pollTimeout,
      minDelay: this.minDelay, maxDelay: this.maxDelay, token: this.token,
      onMessage: function (m) {
        if (!current()) return;
        self._delivered();
        self._onFrame({ type: 'message', channel: m.channel, offset: m.offset, epoch: m.epoch,
          event: m.event, from: m.from, info: m.info, data: m.data });
      },
      onJoin: function (m) { if (current()) self._onFrame(roomFrame('join', m)); },
      onLeave: function (m) { if (current()) self._onFrame(roomFrame('leave', m)); },
      // id 0: the reply to this stream's own request (WebSocket request ids start at 1), so
      // recovered:false counts as a reset only when a position was asked for.
      onSubscribed: function (i) {
        if (!current()) return;
        self._delivered();
        self._onFrame({ type: 'subscribed', id: 0, channel: i.channel, offset: i.offset,
          epoch: i.epoch, recovered: i.recovered });
      },
      onState: function (state, info) {
        if (!current() || state === 'closed') return;
        var full = { transport: self.transport };
        Object.keys(info || {}).forEach(function (k) { full[k] = info[k]; });
        self._setState(state, full);
      },
      onServerError: function (info) {
        var err = new Error(info.message || info.code);
        err.code = info.code;
        self._emit('error', err);
      },
    };
    stream = (this.transport === 'sse' ? sse : poll)(this.base, channels, handlers);
    this.stream = stream;
  };

  // ---------------------------------------------------------------------------------------------
  // Server-Sent Events helper
  // ---------------------------------------------------------------------------------------------

  // The SSE resume token is "epoch,offset,channel" entries joined by ';' (neither character is
  // allowed in channel names or epochs).
  function parseToken(token) {
    var map = new Map();
    String(token || '').split(';').forEach(function (entry) {
      var parts = entry.split(',');
      if (parts.length === 3) map.set(parts[2], { epoch: parts[0], offset: Number(parts[1]) });
    });
    return map;
  }

  function formatToken(positions) {
    var parts = [];
    positions.forEach(function (p, channel) { parts.push(p.epoch + ',' + p.offset + ',' + channel); });
    return parts.join(';');
  }

  // Calls handlers[name](...args) if there is one; a throwing handler cannot break the caller.
  function caller(handlers) {
    return function (name) {
      var fn = handlers[name];
      if (!fn) return;
      try { fn.apply(null, Array.prototype.slice.call(arguments, 1)); }
      catch (e) { setTimeout(function () { throw e; }); }
    };
  }

  /**
   * Wraps a native EventSource on /v1/sse?channel=... The browser itself reconnects and resumes
   * with Last-Event-ID; this adds channel/offset to each message and surfaces control events.
   * handlers: onMessage({channel, offset, epoch, event, data, from, info, id}), onJoin(ev),
   * onLeave(ev) (rooms: {channel, offset, epoch, user, client, info}), onSubscribed(info),
   * onReset(channel, info), onReconnect(info), onServerError(info), onState(state),
   * events (extra event types to listen for: EventSource cannot subscribe to "any type"),
   * lastEventId (resume a position stored earlier), withCredentials, minDelay/maxDelay, token
   * (a subscriber token, or a function returning one, called for every new stream; sent as
   * ?token=, since EventSource cannot send headers: prefer a cookie where you can),
   * envelope (default true: asks for ?envelope=true, whose events carry channel, offset and
   * the sender; false gets each message's bare data, as a plain EventSource does).
   */
  function sse(baseUrl, channels, handlers) {
    var h = handlers || {};
    var list = Array.isArray(channels) ? channels : [channels];
    var positions = parseToken(h.lastEventId);
    var minDelay = h.minDelay != null ? h.minDelay : 1000;
    var maxDelay = h.maxDelay != null ? h.maxDelay : 30000;
    var es = null;
    var timer = null;
    var attempt = 0;
    var closed = false;
    var call = caller(h);
    var json = function (text) { try { return JSON.parse(text); } catch (e) { return text; } };

    var envelope = h.envelope !== false;

    // Which channel and position an event belongs to: an envelope says so; otherwise the event's
    // token differs from the previous one in exactly one channel, the message's. Null for a
    // duplicate (already seen before a reconnect).
    function place(ev, body) {
      var hit = null;
      if (envelope && body && typeof body === 'object' && body.channel != null) {
        var prev = positions.get(body.channel) || null;
        hit = { channel: body.channel, epoch: body.epoch, offset: body.offset, prev: prev };
      } else {
        parseToken(ev.lastEventId).forEach(function (pos, channel) {
          var p = positions.get(channel);
          if (!p || p.epoch !== pos.epoch || p.offset !== pos.offset) {
            hit = { channel: channel, epoch: pos.epoch, offset: pos.offset, prev: p || null };
          }
        });
      }
      if (hit && isDuplicate(hit.prev, hit.epoch, hit.offset)) return null;
      if (hit) positions.set(hit.channel, { epoch: hit.epoch, offset: hit.offset });
      return hit || {};
    }

    function onData(ev) {
      var body = json(ev.data);
      var at = place(ev, body);
      if (!at) return;
      var wrapped = envelope && body && typeof body === 'object' && body.type === 'message';
      call('onMessage', {
        channel: at.channel, offset: at.offset, epoch: at.epoch, event: ev.type,
        data: wrapped ? body.data : body, from: wrapped ? body.from : undefined,
        info: wrapped ? body.info : undefined, id: ev.lastEventId,
      });
    }

    // herald.join / herald.leave: the member ({user, client, info}), with its place in the stream.
    function onRoom(name) {
      return function (ev) {
        var body = json(ev.data);
        var at = place(ev, body);
        if (!at) return;
        call(name, {
          channel: at.channel, offset: at.offset, epoch: at.epoch, user: body.user,
          client: body.client, info: body.info, id: ev.lastEventId,
        });
      };
    }

    // Opens a new stream ourselves, with backoff and the positions we have.
    function reopen() {
      attempt += 1;
      var delay = backoff(minDelay, maxDelay, attempt);
      call('onState', 'reconnecting', { delay: delay, attempt: attempt });
      timer = setTimeout(open, delay);
    }

    function open() {
      withSubscriberToken(h, call, function () { return closed; }, start, reopen);
    }

    function start(subscriber) {
      // The position matters only for our own re-opens: EventSource's own reconnects send
      // Last-Event-ID. EventSource cannot send headers: a subscriber token goes in the URL (the
      // server keeps it out of its logs); cookies (withCredentials) keep it out of URLs.
      var query = streamQuery(list, positions, subscriber);
      if (envelope) query.push('envelope=true');
      var source = new root.EventSource(httpBase(baseUrl) + '/v1/sse?' + query.join('&'),
        { withCredentials: !!h.withCredentials });
      es = source;
      source.addEventListener('message', onData);
      (h.events || []).forEach(function (type) { source.addEventListener(type, onData); });
      source.addEventListener('herald.join', onRoom('onJoin'));
      source.addEventListener('herald.leave', onRoom('onLeave'));
      source.addEventListener('herald.subscribed', function (ev) {
        var info = json(ev.data);
        var prev = positions.get(info.channel) || null;
        info.previous = prev;
        positions.set(info.channel, { epoch: info.epoch, offset: info.offset });
        call('onSubscribed', info);
        if (!info.recovered && prev) call('onReset', info.channel, info);
      });
      // The node is draining, or we fell behind: the stream ends next and EventSource
      // reconnects by itself (after `retry:`), resuming through Last-Event-ID.
      source.addEventListener('herald.reconnect', function (ev) { call('onReconnect', json(ev.data)); });
      source.addEventListener('herald.error', function (ev) { call('onServerError', json(ev.data)); });
      source.onopen = function () { attempt = 0; call('onState', 'open'); };
      source.onerror = function () {
        if (closed) return;
        if (source.readyState !== 2) return call('onState', 'reconnecting');
        // CLOSED: the browser retries network errors, but gives up for good on any HTTP error,
        // including the 503 of a node that is draining (or a 401 for an expired token, which a
        // token function replaces). Reopen, so a deploy never leaves a page dead.
        reopen();
      };
    }
    open();

    return {
      get eventSource() { return es; },
      /** The last position seen per channel; lastEventId() is the same as a resume token. */
      positions: function () { return new Map(positions); },
      lastEventId: function () { return formatToken(positions); },
      close: function () {
        closed = true;
        clearTimeout(timer);
        if (es) es.close();
        call('onState', 'closed');
      },
    };
  }

  // The WebSocket frame an SSE or poll room event stands for (Client handles all transports'
  // events as frames).
  function roomFrame(type, m) {
    return { type: type, channel: m.channel, offset: m.offset, epoch: m.epoch, user: m.user,
      client: m.client, info: m.info };
  }

  // Calls use(token) with the subscriber token option of handlers `h` (null without one): a
  // string, or a function returning one (or a promise of one), asked again for every new stream
  // or poll so an expired token is replaced. A function that fails is reported, then retry().
  function withSubscriberToken(h, call, isClosed, use, retry) {
    if (!h.token) return use(null);
    Promise.resolve()
      .then(function () { return typeof h.token === 'function' ? h.token() : h.token; })
      .then(function (t) { if (!isClosed()) use(t); }, function (e) {
        if (isClosed()) return;
        call('onServerError', { code: 'token', message: String(e) });
        retry();
      });
  }

  // The query of an SSE or poll request: its channels, the positions held, the token if any.
  function streamQuery(channels, positions, subscriber) {
    var query = channels.map(function (c) { return 'channel=' + encodeURIComponent(c); });
    var token = formatToken(positions);
    if (token) query.push('last_event_id=' + encodeURIComponent(token));
    if (subscriber) query.push('token=' + encodeURIComponent(subscriber));
    return query;
  }

  // ---------------------------------------------------------------------------------------------
  // Long-polling helper
  // ---------------------------------------------------------------------------------------------

  /**
   * Long-polls /v1/poll?channel=...: the fallback for networks whose proxies buffer streams.
   * Each poll resumes from the previous answer's position, on whichever node answers. Handlers
   * as for sse(): onMessage({channel, offset, epoch, event, data, from, info, id}), onJoin(ev)
   * and onLeave(ev) (rooms: {channel, offset, epoch, user, client, info}), onSubscribed(info)
   * (each channel's position on the first answer, and again after a reset), onReset(channel,
   * info), onState(state), onServerError(info), lastEventId, withCredentials, minDelay/maxDelay,
   * token (a subscriber token or a function returning one, called before every poll; sent as
   * ?token=); plus timeout (ms one poll may wait for a message, default 25000).
   */
  function poll(baseUrl, channels, handlers) {
    var h = handlers || {};
    var list = Array.isArray(channels) ? channels : [channels];
    var positions = parseToken(h.lastEventId);
    var timeout = h.timeout != null ? h.timeout : 25000;
    var minDelay = h.minDelay != null ? h.minDelay : 1000;
    var maxDelay = h.maxDelay != null ? h.maxDelay : 30000;
    var call = caller(h);
    var timer = null;
    var attempt = 0;
    var closed = false;
    var opened = false;
    var abort = null;

    // Per channel: where this answer starts, then the messages, deduplicated; then the answer's
    // token is our position. With recovered:false, a channel whose answer does not continue our
    // position was reset (its epoch changed, or messages after it are gone).
    function answer(body) {
      var next = parseToken(body.last_event_id);
      var messages = body.messages || [];
      var firsts = new Map();
      messages.forEach(function (m) { if (!firsts.has(m.channel)) firsts.set(m.channel, m.offset); });
      next.forEach(function (pos, channel) {
        var prev = positions.get(channel) || null;
        var first = firsts.has(channel) ? firsts.get(channel) : pos.offset + 1;
        var reset = body.recovered === false && prev !== null && !continues(prev, pos.epoch, first);
        if (opened && !reset) return;
        var info = { channel: channel, epoch: pos.epoch, offset: first - 1,
          recovered: prev !== null && !reset, previous: prev };
        positions.set(channel, { epoch: pos.epoch, offset: first - 1 });
        call('onSubscribed', info);
        if (reset) call('onReset', channel, info);
      });
      messages.forEach(function (m) {
        if (isDuplicate(positions.get(m.channel) || null, m.epoch, m.offset)) return;
        positions.set(m.channel, { epoch: m.epoch, offset: m.offset });
        var at = { channel: m.channel, offset: m.offset, epoch: m.epoch, id: formatToken(positions) };
        // A room's join and leave are messages of its stream whose data is the member.
        var room = m.event === 'herald.join' ? 'onJoin' : m.event === 'herald.leave' ? 'onLeave' : null;
        if (room && m.data && typeof m.data === 'object') {
          return call(room, { channel: at.channel, offset: at.offset, epoch: at.epoch,
            user: m.data.user, client: m.data.client, info: m.data.info, id: at.id });
        }
        call('onMessage', { channel: at.channel, offset: at.offset, epoch: at.epoch,
          event: m.event, data: m.data, from: m.from, info: m.info, id: at.id });
      });
      next.forEach(function (pos, channel) { positions.set(channel, pos); });
    }

    function retry() {
      attempt += 1;
      var delay = backoff(minDelay, maxDelay, attempt);
      call('onState', 'reconnecting', { delay: delay, attempt: attempt });
      timer = setTimeout(once, delay);
    }

    function once() {
      if (closed) return;
      withSubscriberToken(h, call, function () { return closed; }, send, retry);
    }

    function send(subscriber) {
      var query = streamQuery(list, positions, subscriber);
      query.push('timeout=' + Math.max(0, Math.round(timeout)) + 'ms');
      abort = root.AbortController ? new root.AbortController() : null;
      root.fetch(httpBase(baseUrl) + '/v1/poll?' + query.join('&'), {
        cache: 'no-store',
        credentials: h.withCredentials ? 'include' : 'same-origin',
        signal: abort ? abort.signal : undefined,
      }).then(function (r) {
        return r.json().then(
          function (body) { return { status: r.status, body: body }; },
          function () { return { status: r.status, body: null }; });
      }).then(function (res) {
        if (closed) return;
        if (res.status === 200 && res.body) {
          attempt = 0;
          answer(res.body);
          if (!opened) { opened = true; call('onState', 'open'); }
          return once();
        }
        // A request refused for what it is (a bad channel, no permission) would be refused
        // again: report it and stop. 408, 429 and 5xx (draining, overloaded) are retried, and a
        // 401 when a token function can supply a fresh token.
        var fresh = res.status === 401 && typeof h.token === 'function';
        if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429 &&
            !fresh) {
          closed = true;
          call('onServerError', (res.body && res.body.error) || { code: 'http_' + res.status });
          return call('onState', 'closed');
        }
        retry();
      }, function () { if (!closed) retry(); });
    }
    once();

    return {
      /** The last position seen per channel; lastEventId() is the same as a resume token. */
      positions: function () { return new Map(positions); },
      lastEventId: function () { return formatToken(positions); },
      close: function () {
        if (closed) return;
        closed = true;
        clearTimeout(timer);
        if (abort) abort.abort();
        call('onState', 'closed');
      },
    };
  }

  root.Herald = {
    version: 1,
    connect: function (baseUrl, options) { return new Client(baseUrl, options); },
    sse: sse,
    poll: poll,
    Client: Client,
    parseToken: parseToken,
    formatToken: formatToken,
  };
})(typeof window !== 'undefined' ? window : globalThis);
