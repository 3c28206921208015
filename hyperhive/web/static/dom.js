// DOM helpers. Text always goes in through textContent / text nodes, never as HTML.

export const $ = (id) => document.getElementById(id);

// h('button', {class: 'x', onclick: f, text: 'go'}, child, 'text child', ...)
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  el.append(...children.flat().filter((c) => c != null && c !== false));
  return el;
}

// Only touch the DOM when the value changed (keeps text selections and avoids churn).
export function setText(el, value) {
  const text = value == null ? '' : String(value);
  if (el.textContent !== text) el.textContent = text;
}

export function setAttr(el, name, value) {
  if (value == null || value === false) el.removeAttribute(name);
  else if (el.getAttribute(name) !== String(value)) el.setAttribute(name, String(value));
}

// Keyed reconciliation: one entry per key, made once by make(item) -> {el, update(item)},
// updated in place on every render and moved only when out of order. Forms inside an entry
// are therefore never rebuilt, and focus and typed text survive updates.
export function reconcile(parent, items, key, make) {
  const old = parent._keyed || new Map();
  const next = new Map();
  let cursor = parent.firstChild;
  for (const item of items) {
    const k = key(item);
    const entry = old.get(k) || make(item);
    entry.update(item);
    next.set(k, entry);
    if (entry.el === cursor) cursor = cursor.nextSibling;
    else parent.insertBefore(entry.el, cursor);
  }
  for (const [k, entry] of old) if (!next.has(k)) entry.el.remove();
  parent._keyed = next;
  return next;
}

// Clock skew between the server (snapshot `now`) and this browser, in seconds.
let skew = 0;
export const setServerNow = (now) => { skew = now - Date.now() / 1000; };
export const serverNow = () => Date.now() / 1000 + skew;

export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export const ago = (ts) => `${duration(serverNow() - ts)} ago`;

export function clock(ts) {
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

export function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// Live clocks: elements carrying data-since (elapsed) or data-deadline (countdown) tick here.
export function tickClocks(root = document) {
  for (const el of root.querySelectorAll('[data-since]')) {
    setText(el, duration(serverNow() - Number(el.dataset.since)));
  }
  for (const el of root.querySelectorAll('[data-deadline]')) {
    const left = Number(el.dataset.deadline) - serverNow();
    setText(el, left > 0 ? `⏳ ${duration(left)}` : '⏳ due');
    el.classList.toggle('due', left <= 0);
    el.classList.toggle('soon', left > 0 && left < 60);
  }
}
