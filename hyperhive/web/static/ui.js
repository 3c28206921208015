// The server API and the shared interaction pieces: actions with progress, toasts, dialogs.
import { $, h } from './dom.js';

let csrf = '';
export const setCsrf = (token) => { csrf = token; };

export class LoggedOut extends Error {}

export async function getJSON(path) {
  const response = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
  if (response.status === 401) throw new LoggedOut('log in again');
  const data = await response.json().catch(() => ({}));
  if (!response.ok || data.ok === false) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

// An action is a host socket request: POST /api/<cmd> with {cmd, ...fields}; the answer is
// the host socket's reply ({ok: true, ...} or {ok: false, error}).
export async function post(cmd, fields = {}) {
  const response = await fetch(`/api/${cmd}`, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
    body: JSON.stringify({ ...fields, cmd }),
  });
  if (response.status === 401) throw new LoggedOut('log in again');
  const data = await response.json().catch(() => ({}));
  if (!response.ok || !data.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

export function toast(text, kind = 'ok') {
  const el = h('p', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status', text });
  $('toasts').append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 9000 : 4000);
}

// Run an action from a control: disabled + aria-busy while in flight, outcome in `out`
// (an <output>) or a toast. Resolves to the result, or undefined when it failed.
export async function act(control, cmd, fields, { done, out } = {}) {
  const busy = control.closest('form') || control;
  if (busy.getAttribute('aria-busy') === 'true') return undefined;
  busy.setAttribute('aria-busy', 'true');
  control.disabled = true;
  if (out) { out.className = 'out'; out.textContent = '…'; }
  try {
    const result = await post(cmd, fields);
    const message = typeof done === 'function' ? done(result) : done;
    if (out) out.textContent = message || '';
    else if (message) toast(message);
    return result;
  } catch (err) {
    if (out) { out.className = 'out error'; out.textContent = err.message; } else toast(err.message, 'error');
    return undefined;
  } finally {
    busy.removeAttribute('aria-busy');
    control.disabled = false;
  }
}

// A modal confirmation; with `typed`, the confirm button waits for that exact text.
export function confirmDialog({ title, text, ok, typed }) {
  const dialog = $('confirm');
  const input = $('confirm-typed');
  const okButton = $('confirm-ok');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  okButton.textContent = ok;
  $('confirm-typed-wrap').hidden = !typed;
  input.value = '';
  if (typed) {
    $('confirm-typed-label').textContent = `Type ${typed} to confirm`;
    okButton.disabled = true;
    input.oninput = () => { okButton.disabled = input.value !== typed; };
  } else {
    okButton.disabled = false;
  }
  dialog.returnValue = '';
  dialog.showModal();
  (typed ? input : okButton).focus();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
  });
}

// The same modal asking for a line of free text: resolves to it, or null when cancelled.
export async function askDialog({ title, text, ok, label }) {
  const input = $('confirm-typed');
  const pending = confirmDialog({ title, text, ok });
  $('confirm-typed-wrap').hidden = false;
  $('confirm-typed-label').textContent = label;
  input.oninput = null;
  input.focus();
  return (await pending) ? input.value : null;
}

// The side drawer (logs, diffs). `fill(body, tools)` fills it and may refill it later.
export function openDrawer(title, fill) {
  const dialog = $('drawer');
  $('drawer-title').textContent = title;
  $('drawer-tools').replaceChildren();
  const body = $('drawer-body');
  body.replaceChildren('loading…');
  dialog.showModal();
  body.focus();
  fill(body, $('drawer-tools'));
}
