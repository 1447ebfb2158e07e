'use strict';
// A plain client for the gateway's protocol (see pkg/protocol).
(function () {
  const $ = (id) => document.getElementById(id);
  let socket = null;

  function show(text, cls) {
    const li = document.createElement('li');
    li.textContent = text;
    if (cls) li.className = cls;
    $('messages').append(li);
    li.scrollIntoView({ block: 'end' });
  }

  function connect(handle) {
    const url = new URL('/ws', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('handle', handle);
    socket = new WebSocket(url);
    socket.onopen = () => {
      $('state').textContent = 'connected as ' + handle;
      $('join').hidden = true;
      $('send').hidden = false;
      $('m').focus();
    };
    socket.onmessage = (ev) => {
      if (ev.data === '__ping__') return;
      const f = JSON.parse(ev.data);
      show(f.name + ': ' + f.message, f.type === 'error' ? 'error' : '');
    };
    socket.onclose = (ev) => {
      $('state').textContent = 'disconnected (' + ev.code + (ev.reason ? ' ' + ev.reason : '') + ')';
      $('join').hidden = false;
      $('send').hidden = true;
    };
  }

  $('join').addEventListener('submit', (ev) => {
    ev.preventDefault();
    connect($('handle').value.trim());
  });
  $('send').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = $('m').value;
    if (!text.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ type: 'message', message: text }));
    $('m').value = '';
  });
})();
