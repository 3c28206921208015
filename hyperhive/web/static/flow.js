// FL0W: the live tail of broker traffic (sent / delivered) and the composer under it.
import { $, h, setText, setAttr, reconcile, clock } from './dom.js';
import { act } from './ui.js';

const STICKY_KEY = 'hyperhive.compose.to';
const SHOWN = 500;

function makeLine(m0) {
  const mark = h('span', { class: 'mark' });
  const el = h('li', { class: 'msg', 'data-id': m0.id, 'data-from': m0.from },
    h('time', { class: 'when', text: clock(m0.sent_at) }),
    h('span', { class: 'from', text: m0.from }), h('span', { class: 'arrow', text: ' → ' }),
    h('span', { class: 'to', text: m0.to }), h('span', { class: 'body', text: m0.body }), mark);
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
  let sticky = localStorage.getItem(STICKY_KEY) || '';
  let matches = [];
  let active = 0;

  const showPrompt = () => setText(prompt, sticky ? `@${sticky}>` : '@?>');
  const retarget = (name) => {
    sticky = name;
    localStorage.setItem(STICKY_KEY, name);
    showPrompt();
  };
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
    const result = await act(submit, 'send', { to, body }, { out, done: (r) => `sent to @${to} (${r.ids.length})` });
    if (result) input.value = '';
    input.focus();
  });
  showPrompt();
}
