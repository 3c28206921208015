// SCH3DUL3S: scheduled prompts — the list (fire now, edit, cancel) and the operator's form.
import { $, h, setText, reconcile } from './dom.js';
import { act, confirmDialog } from './ui.js';

function cadence(s) {
  if (s.interval_seconds != null) return `every ${s.interval_seconds}s`;
  if (s.cron != null) return `cron ${s.cron} (${s.timezone})`;
  return 'once';
}

function when(ts) {
  return ts == null ? '-' : new Date(ts * 1000).toLocaleString();
}

function makeSchedule(s0) {
  let s = s0;
  const id = h('span', { class: 'name' });
  const what = h('span', { class: 'model' });
  const next = h('span', { class: 'since' });
  const counts = h('span', { class: 'badge' });
  const body = h('p', { class: 'status' });
  const fire = h('button', {
    type: 'button', text: 'F1R3 N0W', 'aria-label': `fire schedule ${s0.id} now`,
    onclick: (e) => act(e.currentTarget, 'fire_schedule_now', { id: s.id }, { done: `schedule #${s.id} fired` }),
  });
  const edit = h('button', {
    type: 'button', text: '3D1T', 'aria-label': `edit schedule ${s0.id}`,
    onclick: () => { form.hidden = !form.hidden; if (!form.hidden) form.elements.body.focus(); },
  });
  const cancel = h('button', {
    type: 'button', class: 'danger', text: 'C4NC3L', 'aria-label': `cancel schedule ${s0.id}`,
    onclick: async (e) => {
      const button = e.currentTarget;
      const ok = await confirmDialog({ title: `C4NC3L schedule #${s.id}?`, text: 'It will not fire again.', ok: 'C4NC3L' });
      if (ok) await act(button, 'cancel_schedule', { id: s.id }, { done: `schedule #${s.id} cancelled` });
    },
  });
  const bodyInput = h('input', { name: 'body', 'aria-label': `new body of schedule ${s0.id}` });
  const everyInput = h('input', { name: 'every', type: 'number', min: '1', 'aria-label': `new interval of schedule ${s0.id}`, placeholder: 'seconds' });
  const save = h('button', { type: 'submit', text: 'S4V3' });
  const out = h('output', { class: 'out' });
  const form = h('form', { class: 'card', hidden: true, autocomplete: 'off' },
    h('label', { text: 'Body' }), bodyInput, h('label', { text: 'Every (s)' }), everyInput,
    h('div', { class: 'actions' }, save, out));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const fields = { id: s.id };
    if (bodyInput.value.trim()) fields.body = bodyInput.value;
    if (everyInput.value) fields.interval_seconds = Number(everyInput.value);
    const result = await act(save, 'edit_schedule', fields, { out, done: 'saved' });
    if (result) form.hidden = true;
  });
  const el = h('article', { class: 'row', 'aria-label': `schedule #${s0.id}`, 'data-id': s0.id },
    h('div', { class: 'line' }, id, what, next, counts),
    body, h('div', { class: 'actions' }, fire, edit, cancel), form);
  return {
    el,
    update(item) {
      s = item;
      setText(id, `#${s.id}`);
      setText(what, `${cadence(s)} → ${s.targets.join(', ')} (by ${s.owner})`);
      setText(next, `next ${when(s.next_at)}`);
      setText(counts, `fired ${s.fires} · skipped ${s.skipped}`);
      setText(body, s.description ? `${s.description}: ${s.body}` : s.body);
      if (!form.hidden) return;
      bodyInput.value = s.body;
      everyInput.value = s.interval_seconds ?? '';
    },
  };
}

// Render the tab; returns the number of active schedules (the tab's pill).
export function renderSchedules(state) {
  const active = [...state.schedules.values()].filter((s) => s.ended_at == null).sort((a, b) => a.id - b.id);
  reconcile($('schedules'), active, (s) => s.id, makeSchedule);
  $('schedules-empty').hidden = active.length > 0;
  setText($('schedules-count'), active.length);
  return active.length;
}

export function setupScheduleForm() {
  const form = $('schedule-form');
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const el = form.elements;
    const fields = {
      targets: el.targets.value.split(/[\s,]+/).filter(Boolean),
      body: el.body.value,
      first_at: el.at.value ? new Date(el.at.value).getTime() / 1000 : Date.now() / 1000,
    };
    if (el.every.value) fields.interval_seconds = Number(el.every.value);
    if (el.cron.value.trim()) fields.cron = el.cron.value.trim();
    if (el.description.value.trim()) fields.description = el.description.value.trim();
    const result = await act(form.querySelector('button'), 'add_schedule', fields, {
      out: form.querySelector('output'),
      done: (r) => `schedule #${r.schedule.id} created`,
    });
    if (result) form.reset();
  });
}
