// The reminders list: every reminder not yet delivered, soonest first, with a live countdown.
// A reminder whose deliveries all failed shows why, and offers retry and cancel.
import { $, h, setText, setAttr, reconcile } from './dom.js';
import { act } from './ui.js';

export function renderReminders(state) {
  const items = [...state.reminders.values()].sort((a, b) => a.due_at - b.due_at || a.id - b.id);
  const failed = items.filter((r) => r.failed).length;
  setText($('reminders-count'), items.length);
  const badge = $('reminders-failed');
  setText(badge, failed ? `⚠ ${failed} failed` : '');
  badge.hidden = failed === 0;
  $('reminders-empty').hidden = items.length > 0;
  reconcile($('reminders'), items, (r) => r.id, makeRow);
  return failed;
}

function makeRow(first) {
  const id = first.id;
  const who = h('span', { class: 'who' });
  const due = h('span', { class: 'clock' });
  const body = h('span', { class: 'body' });
  const path = h('span', { class: 'path' });
  const error = h('span', { class: 'error' });
  const retry = h('button', { type: 'button', class: 'retry', text: '↻ R3TRY' });
  const cancel = h('button', { type: 'button', class: 'cancel', text: '✗ C4NC3L' });
  retry.addEventListener('click', () => act(retry, 'retry_reminder', { id }, { done: `reminder #${id} is delivered now` }));
  cancel.addEventListener('click', () => act(cancel, 'cancel_reminder', { id }, { done: `reminder #${id} cancelled` }));
  const el = h('li', { class: 'reminder', 'data-id': id }, who, ' ', due, ' ', body, ' ', path, ' ', error, h('span', { class: 'actions' }, retry, cancel));
  return {
    el,
    update(r) {
      setText(who, `#${r.id} ${r.agent}`);
      setAttr(due, 'data-deadline', r.due_at);
      setText(body, r.body.length > 200 ? `${r.body.slice(0, 199)}…` : r.body);
      setText(path, r.file_path ? `→ ${r.file_path}` : '');
      setText(error, r.last_error ? `${r.failed ? 'failed' : 'retrying'} after ${r.attempt_count} attempts: ${r.last_error}` : '');
      el.classList.toggle('failed', r.failed);
      retry.hidden = !r.attempt_count;
    },
  };
}
