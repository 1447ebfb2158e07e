'use strict';
// The chat page: a client of the protocol in pkg/protocol. Everything a
// user or another user typed is put on the page as text, never as HTML.
(() => {
  // ---- Handle rules: the same as pkg/protocol.NormalizeHandle ----

  // The server's own tables (pkg/protocol.HandleRanges), written in by the
  // gateway when it serves this file: the page and the server judge every
  // handle alike, whatever Unicode version the browser knows.
  const RULES = /*HANDLE_RULES*/{ disallowed: [], marks: [] }/*END*/;
  const MAX_HANDLE = 32;
  const RESERVED = ['error', 'online', 'server', 'status', 'system'];
  const TRIM = /^\p{White_Space}+|\p{White_Space}+$/gu;

  function inRanges(ranges, cp) {
    let lo = 0, hi = ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (cp < ranges[mid][0]) hi = mid - 1;
      else if (cp > ranges[mid][1]) lo = mid + 1;
      else return true;
    }
    return false;
  }

  // normalizeHandle returns {handle} or {error}, as the server would.
  function normalizeHandle(raw) {
    const s = String(raw).replace(TRIM, '').normalize('NFC');
    const chars = [...s];
    if (chars.length === 0) return { error: 'handle is empty' };
    if (chars.length > MAX_HANDLE) return { error: 'handle is longer than 32 characters' };
    if (chars.some((c) => inRanges(RULES.disallowed, c.codePointAt(0)))) {
      return { error: 'handle contains an invisible or control character' };
    }
    if (inRanges(RULES.marks, chars[0].codePointAt(0))) return { error: 'handle starts with a combining mark' };
    const folded = s.toUpperCase().toLowerCase();
    if (RESERVED.includes(folded)) return { error: `handle "${s}" is reserved` };
    return { handle: s };
  }

  // ---- Page ----

  const $ = (id) => document.getElementById(id);
  const els = {
    join: $('join'), joinForm: $('join-form'), handle: $('handle'), handleError: $('handle-error'),
    chat: $('chat'), messages: $('messages'), sendForm: $('send-form'), input: $('m'), sendError: $('send-error'),
    online: $('online'), count: $('count'), conn: $('conn'), me: $('me'), change: $('change'),
  };
  const STORE = 'chat.handle';

  let me = null;            // the bound handle
  let ws = null;            // the current socket
  let attempt = 0;          // reconnects since the last success
  let retry = null;         // the pending reconnect timer
  let cidSeq = 0;
  const pending = new Map(); // cid → the <li> of a message sent and not yet seen back
  const seenIds = new Set(); // message ids shown, so a message is never shown twice

  // The roster: a snapshot plus the notices numbered after it.
  const roster = { v: null, handles: new Set(), count: 0, early: [], asked: false };

  function setConn(state, text) {
    els.conn.dataset.state = state;
    els.conn.textContent = text;
    document.body.dataset.conn = state;
  }

  function timeOf(ts) {
    const d = new Date(ts);
    const t = document.createElement('time');
    t.dateTime = d.toISOString();
    t.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return t;
  }

  function nearBottom() {
    const m = els.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  // append adds an entry to the log in ts order (replays can be late).
  function append(li, ts) {
    const stick = nearBottom();
    li.dataset.ts = String(ts);
    let after = els.messages.lastElementChild;
    while (after && Number(after.dataset.ts) > ts) after = after.previousElementSibling;
    if (after) after.after(li); else els.messages.prepend(li);
    if (stick) els.messages.scrollTop = els.messages.scrollHeight;
  }

  function messageItem(name, text, ts, own) {
    const li = document.createElement('li');
    li.className = own ? 'message own' : 'message';
    li.dataset.name = name;
    const head = document.createElement('div');
    head.className = 'meta';
    const who = document.createElement('span');
    who.className = 'name';
    who.textContent = name;
    head.append(who, ' ', timeOf(ts));
    const body = document.createElement('p');
    body.className = 'text';
    body.textContent = text;
    li.append(head, body);
    return li;
  }

  function showMessage(f) {
    if (seenIds.has(f.id)) return;
    seenIds.add(f.id);
    const mine = f.name === me;
    const li = messageItem(f.name, f.message, f.ts, mine);
    li.dataset.id = f.id;
    li.dataset.ts = String(f.ts);
    const sent = mine && f.cid ? pending.get(f.cid) : null;
    if (sent) { // our own, confirmed: it takes the place of its pending copy
      pending.delete(f.cid);
      sent.replaceWith(li);
      return;
    }
    append(li, f.ts);
  }

  function showNotice(text, ts) {
    const li = document.createElement('li');
    li.className = 'notice';
    li.textContent = text;
    append(li, ts || Date.now());
  }

  function failPending(li, why) {
    li.classList.remove('pending');
    li.classList.add('failed');
    const note = document.createElement('span');
    note.className = 'why';
    note.textContent = why;
    li.querySelector('.meta').append(' ', note);
  }

  function renderRoster() {
    const names = [...roster.handles].sort();
    els.online.replaceChildren(...names.map((n) => {
      const li = document.createElement('li');
      li.textContent = n;
      if (n === me) li.className = 'you';
      return li;
    }));
    els.count.textContent = String(roster.count);
  }

  function applyNotice(n) {
    const had = roster.handles.has(n.name);
    if (n.type === 'join' && !had) { roster.handles.add(n.name); roster.count++; }
    if (n.type === 'leave' && had) { roster.handles.delete(n.name); roster.count--; }
    roster.v = n.v;
    showNotice(n.type === 'join' ? `${n.name} joined` : `${n.name} left${n.reason && n.reason !== 'closed' ? ` (${n.reason.replace('-', ' ')})` : ''}`, n.ts);
  }

  function askWho() {
    if (roster.asked || !ws || ws.readyState !== WebSocket.OPEN) return;
    roster.asked = true;
    ws.send(JSON.stringify({ type: 'who' }));
  }

  // onNotice applies a join or leave in v order: notices that come before
  // the roster, or after a gap, wait; a gap makes us ask again.
  function onNotice(n) {
    if (roster.v === null) { roster.early.push(n); return; }
    if (n.v <= roster.v) return;
    if (n.v > roster.v + 1) { roster.early.push(n); askWho(); return; }
    applyNotice(n);
    drainEarly();
    renderRoster();
  }

  function drainEarly() {
    roster.early.sort((a, b) => a.v - b.v);
    while (roster.early.length && roster.early[0].v <= roster.v + 1) {
      const n = roster.early.shift();
      if (n.v === roster.v + 1) applyNotice(n);
    }
  }

  function onRoster(f) {
    roster.asked = false;
    if (roster.v !== null && f.v < roster.v) return; // older than what we have
    roster.handles = new Set(f.handles || []);
    roster.count = typeof f.count === 'number' ? f.count : roster.handles.size;
    roster.v = f.v;
    drainEarly();
    renderRoster();
  }

  const ERRORS = {
    rate_limited: 'You are sending messages too fast. Wait a moment.',
    unavailable: 'Not sent: the chat is reconnecting. Try again in a moment.',
    not_delivered: 'This message may not have reached everyone.',
    empty_message: 'Write something first.',
    no_handle: 'Join with a handle first.',
  };

  // What a close code means to the person whose page it closed.
  const CLOSES = {
    1001: 'The chat server is restarting.',
    1008: 'The connection was reset because this page fell behind or broke a rule.',
    1009: 'That message was too large to send.',
  };

  function onError(f) {
    if (f.code === 'bad_handle') {
      forget();
      showJoin(f.message);
      return;
    }
    const words = ERRORS[f.code] || f.message;
    const li = f.cid && pending.get(f.cid);
    if (li) {
      pending.delete(f.cid);
      failPending(li, words);
      return;
    }
    els.sendError.textContent = words;
  }

  function onFrame(data) {
    if (data === '__ping__') return;
    let f;
    try { f = JSON.parse(data); } catch { return; }
    switch (f.type) {
      case 'message': showMessage(f); break;
      case 'join': case 'leave': onNotice(f); break;
      case 'presence': onRoster(f); break;
      case 'error': onError(f); break;
      case 'status':
        if (f.state === 'reconnecting') setConn('degraded', 'Chat server reconnecting…');
        else setConn('connected', 'Connected');
        break;
    }
  }

  // ---- Connection ----

  function connect() {
    clearTimeout(retry);
    const url = new URL('/ws', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('handle', me);
    const sock = new WebSocket(url);
    ws = sock;
    roster.v = null; roster.early = []; roster.asked = false;
    sock.onopen = () => {
      attempt = 0;
      setConn('connected', 'Connected');
      els.sendError.textContent = '';
    };
    sock.onmessage = (ev) => { if (ws === sock) onFrame(ev.data); };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      for (const [cid, li] of pending) {
        pending.delete(cid);
        failPending(li, 'Connection lost before this was confirmed.');
      }
      if (me === null) return; // we left on purpose
      if (ev.code === 1008 && ev.reason === 'bad handle') return; // onError showed why
      const why = CLOSES[ev.code];
      if (why) els.sendError.textContent = why;
      // Exponential backoff with jitter: 0.5 s doubling to 30 s, 50–100 % of it.
      const base = Math.min(30000, 500 * 2 ** attempt);
      const delay = base / 2 + Math.random() * base / 2;
      attempt++;
      setConn('reconnecting', `Reconnecting… (attempt ${attempt})`);
      retry = setTimeout(connect, delay);
    };
  }

  function send(text) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      els.sendError.textContent = 'Not connected. Reconnecting…';
      return false;
    }
    const cid = `c${Date.now().toString(36)}${(cidSeq++).toString(36)}`;
    ws.send(JSON.stringify({ type: 'message', message: text, cid }));
    const li = messageItem(me, text, Date.now(), true);
    li.classList.add('pending');
    pending.set(cid, li);
    append(li, Number.MAX_SAFE_INTEGER); // stays last until confirmed
    els.sendError.textContent = '';
    return true;
  }

  // ---- Views ----

  function showJoin(error) {
    els.chat.hidden = true;
    els.join.hidden = false;
    els.me.hidden = true;
    els.change.hidden = true;
    els.handleError.textContent = error || '';
    els.handle.setAttribute('aria-invalid', error ? 'true' : 'false');
    setConn('idle', '');
    els.handle.focus();
  }

  function showChat() {
    els.join.hidden = true;
    els.chat.hidden = false;
    els.me.hidden = false;
    els.me.textContent = `as ${me}`;
    els.change.hidden = false;
    els.input.focus();
  }

  function start(handle) {
    me = handle;
    try { localStorage.setItem(STORE, handle); } catch { /* private mode */ }
    setConn('connecting', 'Connecting…');
    showChat();
    connect();
  }

  function forget() {
    me = null;
    clearTimeout(retry);
    try { localStorage.removeItem(STORE); } catch { /* private mode */ }
    if (ws) { const s = ws; ws = null; s.close(1000); }
  }

  els.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const r = normalizeHandle(els.handle.value);
    if (r.error) {
      els.handleError.textContent = r.error;
      els.handle.setAttribute('aria-invalid', 'true');
      els.handle.focus();
      return;
    }
    els.handle.value = r.handle;
    start(r.handle);
  });

  els.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = els.input.value;
    if (!text.trim()) return;
    if (send(text)) els.input.value = '';
  });

  els.change.addEventListener('click', () => {
    forget();
    els.messages.replaceChildren();
    seenIds.clear();
    showJoin();
  });

  // For tests: the handle rules as the page applies them.
  window.chatHandleRules = { normalizeHandle };

  let remembered = null;
  try { remembered = localStorage.getItem(STORE); } catch { /* private mode */ }
  const ok = remembered && normalizeHandle(remembered);
  if (ok && ok.handle) {
    els.handle.value = ok.handle;
    start(ok.handle);
  } else {
    showJoin();
  }
})();
