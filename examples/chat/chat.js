// The chat page: everything but logging in and private messages goes straight to herald with
// herald.js (WebSocket: rooms, presence, join/leave, publishing as the token's user).
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var me = null;        // my name (the token's sub)
  var token = null;     // the latest token
  var client = null;    // Herald.connect(...)
  var room = null;      // the current room (channel chat:<room>)
  var dmTo = null;      // whom the composer sends to privately, or null for the room
  var rooms = ['lobby', 'random'];

  function getToken() {
    return fetch('/token?user=' + encodeURIComponent(me))
      .then(function (r) { return r.json(); })
      .then(function (j) { token = j.token; return token; });
  }

  // Untrusted text is only ever set with textContent.
  function line(cls, who, text, colour) {
    var li = document.createElement('li');
    if (cls) li.className = cls;
    if (who) {
      var w = document.createElement('span');
      w.className = 'who';
      w.textContent = who;
      if (colour) w.style.color = colour;
      li.appendChild(w);
    }
    li.appendChild(document.createTextNode(text));
    $('log').appendChild(li);
    $('log').scrollTop = $('log').scrollHeight;
    return li;
  }

  function renderRooms() {
    var ul = $('rooms');
    ul.textContent = '';
    rooms.forEach(function (r) {
      var li = document.createElement('li');
      li.textContent = '# ' + r;
      li.dataset.room = r;
      if (r === room) li.className = 'current';
      li.onclick = function () { enter(r); };
      ul.appendChild(li);
    });
  }

  // The member list is the room's presence, read again whenever someone joins or leaves (and
  // on every (re)subscribe: the room may have changed while we were away).
  var reload = null;
  function loadMembers() {
    clearTimeout(reload);
    reload = setTimeout(function () {
      var channel = 'chat:' + room;
      client.presence(channel).then(function (p) {
        if (p.channel !== 'chat:' + room) return;
        var users = new Map();
        p.members.forEach(function (m) { users.set(m.user, m.info || {}); });
        var ul = $('members');
        ul.textContent = '';
        Array.from(users.keys()).sort().forEach(function (user) {
          var li = document.createElement('li');
          li.dataset.user = user;
          var dot = document.createElement('span');
          dot.className = 'dot';
          if (users.get(user).colour) dot.style.background = users.get(user).colour;
          li.appendChild(dot);
          li.appendChild(document.createTextNode(' ' + user + (user === me ? ' (you)' : '')));
          if (user !== me) {
            var b = document.createElement('button');
            b.className = 'link';
            b.textContent = 'DM';
            b.onclick = function () { dmTo = user; $('dm-to').textContent = 'private to ' + user + ' (Esc: back to the room)'; $('text').focus(); };
            li.appendChild(b);
          }
          ul.appendChild(li);
        });
      }, function (e) { line('system', null, 'presence: ' + e.message); });
    }, 50);
  }

  function onMessage(m) {
    if (m.channel !== 'chat:' + room) return;
    var text = m.data && typeof m.data.text === 'string' ? m.data.text : JSON.stringify(m.data);
    line('', m.from || '?', text, m.info && m.info.colour);
  }

  function onRoomEvent(kind) {
    return function (e) {
      if (e.channel !== 'chat:' + room) return;
      line('system', null, e.user + (kind === 'join' ? ' joined' : ' left'));
      loadMembers();
    };
  }

  function enter(r) {
    if (r === room) return;
    if (room) client.unsubscribe('chat:' + room);
    room = r;
    if (rooms.indexOf(r) < 0) rooms.push(r);
    renderRooms();
    $('room-title').textContent = '# ' + r;
    $('log').textContent = '';
    $('members').textContent = '';
    // From the start of what the room retains: recent messages (and joins and leaves) first.
    client.subscribe('chat:' + r, onMessage, {
      since: { epoch: '', offset: 0 },
      onJoin: onRoomEvent('join'),
      onLeave: onRoomEvent('leave'),
    }).catch(function (e) { line('system', null, 'cannot enter #' + r + ': ' + e.message); });
  }

  function start() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('me').textContent = 'you are ' + me;
    client = Herald.connect(window.CHAT.herald, {
      token: getToken, // asked again on every reconnect: an expired token is replaced
      onState: function (s) { $('state').textContent = s; },
      onError: function (e) { if (e.code) line('system', null, e.code + ': ' + e.message); },
    });
    client.on('subscribed', function (info) { if (info.channel === 'chat:' + room) loadMembers(); });
    // Private messages: my own channel, which only my token can read.
    client.subscribe('user:' + me, function (m) {
      if (m.event !== 'dm') return;
      var d = m.data;
      var text = d.from === me ? '(to ' + d.to + ') ' + d.text : '(private) ' + d.text;
      line('dm', d.from, text, d.info && d.info.colour);
    });
    enter('lobby');
  }

  $('login').onsubmit = function (e) {
    e.preventDefault();
    me = $('name').value.trim();
    if (me && window.Herald) start();
  };
  $('room-form').onsubmit = function (e) {
    e.preventDefault();
    var r = $('new-room').value.trim();
    $('new-room').value = '';
    if (/^[A-Za-z0-9_-]{1,32}$/.test(r)) enter(r);
  };
  $('text').onkeydown = function (e) {
    if (e.key === 'Escape') { dmTo = null; $('dm-to').textContent = ''; }
  };
  $('composer').onsubmit = function (e) {
    e.preventDefault();
    var text = $('text').value.trim();
    if (!text) return;
    $('text').value = '';
    if (dmTo) {
      fetch('/dm', {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer ' + token },
        body: JSON.stringify({ to: dmTo, text: text }),
      }).then(function (r) { if (!r.ok) line('system', null, 'private message not sent (' + r.status + ')'); });
      return;
    }
    // Acknowledged once it is in the room's history; everyone (us included) receives it.
    client.publish('chat:' + room, { text: text })
      .catch(function (err) { line('system', null, 'not sent: ' + err.message); });
  };
  // herald.js comes from the herald node itself (GET /herald.js), whatever version it runs.
  var script = document.createElement('script');
  script.src = window.CHAT.herald + '/herald.js';
  script.onload = function () {
    // ?user=NAME&room=ROOM logs in at once (handy for a second tab, and for tests).
    var q = new URLSearchParams(location.search);
    if (q.get('user')) {
      me = q.get('user');
      start();
      if (q.get('room')) enter(q.get('room'));
    }
  };
  script.onerror = function () { $('state').textContent = 'herald is not reachable at ' + window.CHAT.herald; };
  document.head.appendChild(script);
})();
