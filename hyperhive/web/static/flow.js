// FL0W: the live tail of broker traffic (sent / delivered) and the composer under it.
import { $, h, setText, setAttr, reconcile, clock } from './dom.js';
import { act } from './ui.js';

const STICKY_KEY = 'hyperhive.compose.to';
const SHOWN = 500;
// Senders the operator cannot write back to (the daemon's own messages).
const NO_REPLY = new Set(['system', 'reminder']);

export const canReply = (m) => m.to === 'operator' && !NO_REPLY.has(m.from);

// A message's id and, for a reply, what it answers ("↩ #12"); shared with the inbox.
export function msgId(m) {
  return h('span', { class: 'id', text: `#${m.id}` });
}

export function replyMark(m) {
  if (m.in_reply_to == null) return null;
  return h('span', {
    class: 'reply-to', text: `↩ #${m.in_reply_to}`, title: `in reply to message #${m.in_reply_to}`,
  });
}

// Set by the composer: start a reply to message m from the flow.
let startReply = () => {};

function makeLine(m0) {
  const mark = h('span', { class: 'mark' });
  const reply = canReply(m0) ? h('button', {
    type: 'button', class: 'reply', text: '↩', title: `reply to @${m0.from}`,
    'aria-label': `reply to message #${m0.id} from ${m0.from}`, onclick: () => startReply(m0),
  }) : null;
  const el = h('li', { class: 'msg', 'data-id': m0.id, 'data-from': m0.from },
    h('time', { class: 'when', text: clock(m0.sent_at) }), msgId(m0),
    h('span', { class: 'from', text: m0.from }), h('span', { class: 'arrow', text: ' → ' }),
    h('span', { class: 'to', text: m0.to }), replyMark(m0), h('span', { class: 'body', text: m0.body }),
    mark, reply);
  return {
    el,
    update(m) {
      const state = m.delivered_at == null ? 'sent' : 'delivered';
      setAttr(el, 'data-state', state);
      setText(mark, state === 'sent' ? '· sent' : '✓ delivered');
    },
  };
}

let unseen = 0;

export function renderFlow(state) {
  const list = $('flow');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const before = list.childElementCount;
  const messages = [...state.flow.values()].sort((a, b) => a.id - b.id).slice(-SHOWN);
  reconcile(list, messages, (m) => m.id, makeLine);
  const added = Math.max(0, list.childElementCount - before);
  if (atBottom) {
    list.scrollTop = list.scrollHeight;
    unseen = 0;
  } else unseen += added;
  const pill = $('flow-new');
  pill.hidden = unseen === 0;
  setText(pill, `↓ ${unseen} new`);
}

export function flowToBottom() {
  const list = $('flow');
  list.scrollTop = list.scrollHeight;
  unseen = 0;
  $('flow-new').hidden = true;
}

// ------------------------------------------------------------------ composer

export function setupComposer(state) {
  const form = $('composer');
  const input = $('compose');
  const list = $('completion');
  const prompt = $('compose-prompt');
  const out = form.querySelector('output');
  const submit = form.querySelector('button[type=submit]');
  const chip = $('compose-reply');
  let sticky = localStorage.getItem(STICKY_KEY) || '';
  let replying = null; // the message being answered, while the reply chip is shown
  let matches = [];
  let active = 0;

  const showPrompt = () => setText(prompt, sticky ? `@${sticky}>` : '@?>');
  const retarget = (name) => {
    sticky = name;
    localStorage.setItem(STICKY_KEY, name);
    showPrompt();
  };
  const setReplying = (m) => {
    replying = m;
    chip.hidden = m == null;
    setText($('compose-reply-text'), m == null ? '' : `↩ replying to #${m.id} from @${m.from}`);
  };
  startReply = (m) => {
    setReplying(m);
    input.value = `@${m.from} `;
    setText(out, '');
    input.focus();
  };
  $('compose-reply-cancel').addEventListener('click', () => { setReplying(null); input.focus(); });
  const names = () => [...[...state.agents.keys()].sort(), '*'];

  const close = () => {
    list.hidden = true;
    matches = [];
    setAttr(input, 'aria-expanded', 'false');
    input.removeAttribute('aria-activedescendant');
  };
  const paint = () => {
    list.replaceChildren(...matches.map((name, i) => h('li', {
      id: `completion-${i}`, role: 'option', 'aria-selected': String(i === active),
      text: name === '*' ? '* (everyone)' : name,
      onmousedown: (e) => { e.preventDefault(); pick(i); },
    })));
    list.hidden = matches.length === 0;
    setAttr(input, 'aria-expanded', String(!list.hidden));
    setAttr(input, 'aria-activedescendant', matches.length ? `completion-${active}` : null);
  };
  const pick = (i) => {
    input.value = `@${matches[i]} `;
    close();
    input.focus();
  };
  const complete = () => {
    const m = /^@(\S*)$/.exec(input.value);
    if (!m || input.selectionStart !== input.value.length) return close();
    matches = names().filter((n) => n.startsWith(m[1]));
    active = 0;
    paint();
  };

  input.addEventListener('input', complete);
  input.addEventListener('blur', close);
  input.addEventListener('keydown', (e) => {
    if (list.hidden) return;
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      active = (active + (e.key === 'ArrowDown' ? 1 : -1) + matches.length) % matches.length;
      paint();
    } else if (e.key === 'Tab' || e.key === 'Enter') {
      e.preventDefault();
      pick(active);
    } else if (e.key === 'Escape') {
      e.preventDefault();
      close();
    }
  });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const value = input.value;
    const m = /^@(\S+)(?:\s+([\s\S]*))?$/.exec(value.trim());
    let to = sticky;
    let body = value.trim();
    if (m) {
      retarget(m[1]);
      to = m[1];
      body = (m[2] || '').trim();
      if (!body) { input.value = ''; setText(out, `now talking to @${to}`); return; }
    }
    if (!body) return;
    if (!to) { out.className = 'out error'; setText(out, 'who to? start with @name'); return; }
    // A reply answers its message only when it goes back to that message's sender.
    const inReplyTo = replying && replying.from === to ? replying.id : null;
    const fields = inReplyTo == null ? { to, body } : { to, body, in_reply_to: inReplyTo };
    const result = await act(submit, 'send', fields, { out, done: (r) => `sent to @${to} (${r.ids.length})` });
    if (result) { input.value = ''; setReplying(null); }
    input.focus();
  });
  showPrompt();
}
