// Y3R C4LL: approvals, questions and the operator inbox.
import { $, h, setText, setAttr, reconcile, ago, clock, serverNow } from './dom.js';
import { act, confirmDialog, openDrawer, getJSON, toast } from './ui.js';
import { canReply, msgId, replyMark } from './flow.js';

const LINGER_SECONDS = 30; // a question resolved while on screen stays there this long, marked

// ------------------------------------------------------------------ approvals

function makeApproval(a0) {
  let a = a0;
  const id = a0.id;
  const kind = h('span', { class: 'badge kind' });
  const agent = h('span', { class: 'name' });
  const age = h('span', { class: 'age' });
  const desc = h('p', { class: 'desc', hidden: true });
  const ref = h('p', { class: 'ref', hidden: true });
  const approve = h('button', {
    type: 'button', class: 'go', text: '◆ APPR0VE', 'aria-label': `approve #${id}`,
    onclick: async (e) => {
      const r = await act(e.currentTarget, 'approve', { id }, { done: (x) => x.approval.status === 'approved' && `#${id} approved` });
      // pending: carried out on the agent's node, which records the outcome later.
      if (r && r.approval.status === 'pending') toast(`#${id} ${r.approval.note || 'pending'}`);
      else if (r && r.approval.status !== 'approved') toast(`#${id} ${r.approval.status}: ${r.approval.note || ''}`, 'error');
    },
  });
  const note = h('input', { id: `deny-note-${id}`, maxlength: 4000, placeholder: 'why not (the manager gets it)' });
  const denySubmit = h('button', { type: 'submit', class: 'danger', text: 'D3NY' });
  const denyForm = h('form', {
    class: 'deny', hidden: true, 'aria-label': `deny #${id}`,
    onsubmit: (e) => {
      e.preventDefault();
      act(denySubmit, 'deny', { id, note: note.value.trim() || null }, { done: `#${id} denied` });
    },
  }, h('label', { for: note.id, text: 'Note' }), note, denySubmit);
  const denyToggle = h('button', {
    type: 'button', text: 'D3NY…', 'aria-expanded': 'false', 'aria-label': `deny #${id}…`,
    onclick: () => {
      denyForm.hidden = !denyForm.hidden;
      setAttr(denyToggle, 'aria-expanded', String(!denyForm.hidden));
      if (!denyForm.hidden) note.focus();
    },
  });
  const diff = a0.kind === 'apply_commit'
    ? h('button', { type: 'button', text: 'D1FF', 'aria-label': `diff of #${id}`, onclick: () => showDiff(a) })
    : null;
  const el = h('article', { class: 'card approval', 'data-id': id, 'aria-label': `approval #${id}` },
    h('div', { class: 'line' }, h('span', { class: 'id', text: `#${id}` }), kind, agent, age),
    desc, ref,
    h('div', { class: 'actions' }, approve, denyToggle, diff),
    denyForm);
  return {
    el,
    update(next) {
      a = next;
      setText(kind, a.kind.replace('_', ' '));
      setText(agent, a.agent);
      setText(age, ago(a.requested_at));
      desc.hidden = !a.description;
      setText(desc, a.description);
      ref.hidden = !a.commit_ref;
      const sha = a.fetched_sha ? ` → ${a.fetched_sha.slice(0, 12)}` : '';
      setText(ref, a.commit_ref ? `commit ${a.commit_ref.slice(0, 12)}${sha}` : '');
    },
  };
}

function showDiff(a) {
  openDrawer(`D1FF · #${a.id} ${a.agent}`, async (body) => {
    try {
      const { diff } = await getJSON(`/api/approvals/${a.id}/diff`);
      body.replaceChildren(...diff.split('\n').map((line) => {
        const cls = line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : line.startsWith('@@') ? 'hunk' : '';
        return h('span', { class: cls, text: `${line}\n` });
      }));
    } catch (err) {
      body.textContent = `error: ${err.message}`;
    }
  });
}

function makeDone(kind) {
  return (x0) => {
    const text = h('span', { class: 'what' });
    const outcome = h('span', { class: 'badge outcome' });
    const detail = h('span', { class: 'detail' });
    const el = h('li', { class: `done ${kind}`, 'data-id': x0.id }, h('span', { class: 'id', text: `#${x0.id}` }), text, outcome, detail);
    return {
      el,
      update(x) {
        if (kind === 'approval') {
          setText(text, `${x.kind.replace('_', ' ')} ${x.agent}`);
          setText(outcome, x.status);
          setAttr(el, 'data-status', x.status);
          setText(detail, x.note ? `— ${x.note}` : '');
        } else {
          const status = questionStatus(x);
          setText(text, `${x.asker}${x.target ? ` → ${x.target}` : ''}: ${x.question}`);
          setText(outcome, status);
          setAttr(el, 'data-status', status);
          setText(detail, status === 'answered' ? `— ${x.answer} (${x.answerer})` : '');
        }
      },
    };
  };
}

// ------------------------------------------------------------------ questions

export function questionStatus(q) {
  if (q.answered_at == null) return 'open';
  if (q.answer === '[expired]') return 'expired';
  if (q.answer && q.answer.startsWith('[cancelled')) return 'cancelled';
  return 'answered';
}

function makeQuestion(q0) {
  let q = q0;
  const id = q0.id;
  const kind = q0.multi ? 'checkbox' : 'radio';
  const who = h('span', { class: 'who' });
  const chip = h('span', { class: 'chip' });
  const text = h('p', { class: 'qtext', id: `q-text-${id}` });
  const options = h('fieldset', { class: 'options', hidden: !q0.options.length },
    h('legend', { class: 'sr-only', text: q0.multi ? 'choose any' : 'choose one' }),
    ...q0.options.map((opt, i) => h('label', { class: 'option' },
      h('input', { type: kind, name: `q-${id}`, value: opt, id: `q-${id}-${i}` }), ' ', opt)));
  const free = h('textarea', { rows: 2, id: `q-free-${id}`, placeholder: 'or type your own… (Enter sends, Shift+Enter for a new line)' });
  const out = h('output', { class: 'out' });
  const send = h('button', { type: 'submit', class: 'go', text: '4NSW3R' });
  const cancel = h('button', {
    type: 'button', class: 'danger', text: 'C4NC3L', 'aria-label': `cancel question #${id}`,
    onclick: async () => {
      const ok = await confirmDialog({ title: `Cancel question #${id}?`, text: q.question, ok: 'C4NC3L QU35T10N' });
      if (ok) act(cancel, 'cancel_question', { id }, { out, done: 'cancelled' });
    },
  });
  const form = h('form', {
    class: 'answer', 'aria-labelledby': text.id,
    onsubmit: (e) => {
      e.preventDefault();
      const picked = [...options.querySelectorAll('input:checked')].map((i) => i.value);
      const parts = [...picked, free.value.trim()].filter(Boolean);
      if (!parts.length) {
        out.className = 'out error';
        out.textContent = 'pick an option or type an answer';
        return;
      }
      act(send, 'answer', { id, answer: parts.join(', ') }, { out, done: 'answered' });
    },
  }, options, h('label', { for: free.id, class: 'sr-only', text: 'your answer' }), free,
  h('div', { class: 'actions' }, send, cancel, out));
  free.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
  });
  const override = h('button', {
    type: 'button', text: '0V3RR1D3', 'aria-expanded': 'false', 'aria-label': `answer #${id} instead of ${q0.target}`,
    onclick: () => {
      form.hidden = !form.hidden;
      setAttr(override, 'aria-expanded', String(!form.hidden));
      if (!form.hidden) free.focus();
    },
  });
  const peer = q0.target != null;
  form.hidden = peer;
  const el = h('article', { class: `card question${peer ? ' peer' : ''}`, 'data-id': id, 'aria-label': `question #${id}` },
    h('div', { class: 'line' }, h('span', { class: 'id', text: `#${id}` }), who, chip, peer ? override : null),
    text, form);
  return {
    el,
    update(next) {
      q = next;
      const status = questionStatus(q);
      setAttr(el, 'data-status', status);
      setText(who, peer ? `${q.asker} asks ${q.target}` : `${q.asker} asks you`);
      setText(text, q.question);
      if (status === 'open') {
        setAttr(chip, 'data-deadline', q.deadline_at);
        chip.hidden = q.deadline_at == null;
      } else {
        chip.removeAttribute('data-deadline');
        chip.hidden = false;
        chip.className = `chip ${status}`;
        setText(chip, status === 'expired' ? '⌛ expired' : status === 'cancelled' ? '✕ cancelled'
          : `✓ ${q.answerer}: ${q.answer}`);
        form.hidden = true;
        override.hidden = true;
      }
    },
  };
}

// ------------------------------------------------------------------ inbox

// ↩ R3PLY opens a one-line form under the message: it goes back to the sender, with
// in_reply_to set to this message.
function replyForm(m0, toggle) {
  const box = h('input', { name: 'body', spellcheck: 'false', 'aria-label': `reply to ${m0.from}` });
  const out = h('output', { class: 'out' });
  const submit = h('button', { type: 'submit', class: 'go', text: 'S3ND' });
  const form = h('form', { class: 'reply-form', autocomplete: 'off', 'aria-label': `reply to message #${m0.id}`, hidden: true },
    h('span', { class: 'prompt', text: `↩ @${m0.from}>` }), box, submit,
    h('button', { type: 'button', text: 'C4NC3L', onclick: () => toggle(false) }), out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = box.value.trim();
    if (!body) return;
    const fields = { to: m0.from, body, in_reply_to: m0.id };
    if (await act(submit, 'send', fields, { out, done: '' })) {
      box.value = '';
      toggle(false);
      toast(`↩ replied to @${m0.from}`);
    }
  });
  box.addEventListener('keydown', (e) => { if (e.key === 'Escape') { e.preventDefault(); toggle(false); } });
  return { form, box, out };
}

function makeInbox(m0) {
  const when = h('time', { class: 'when' });
  const state = h('span', { class: 'mark' });
  let reply = null;
  let form = null;
  const toggle = (open) => {
    form.form.hidden = !open;
    setAttr(reply, 'aria-expanded', String(open));
    if (open) { setText(form.out, ''); form.box.focus(); } else reply.focus();
  };
  if (canReply(m0)) {
    reply = h('button', {
      type: 'button', class: 'reply', text: '↩ R3PLY', 'aria-expanded': 'false',
      'aria-label': `reply to message #${m0.id} from ${m0.from}`, onclick: () => toggle(form.form.hidden),
    });
    form = replyForm(m0, toggle);
  }
  const el = h('li', { class: 'msg', 'data-id': m0.id, 'data-from': m0.from },
    when, msgId(m0), h('span', { class: 'from', text: m0.from }), replyMark(m0),
    h('span', { class: 'body', text: m0.body }), state, reply, form && form.form);
  return {
    el,
    update(m) {
      setText(when, clock(m.sent_at));
      const unread = m.delivered_at == null;
      el.classList.toggle('unread', unread);
      setText(state, unread ? '● new' : '');
    },
  };
}

// ------------------------------------------------------------------ render

function setCount(id, n) {
  setText($(id), n);
  $(id).classList.toggle('hot', n > 0);
}

export function renderCalls(state) {
  const approvals = [...state.approvals.values()].sort((a, b) => a.id - b.id);
  const pending = approvals.filter((a) => a.status === 'pending');
  const done = approvals.filter((a) => a.status !== 'pending').reverse();
  reconcile($('approvals'), pending, (a) => a.id, makeApproval);
  reconcile($('approvals-done'), done, (a) => a.id, makeDone('approval'));
  $('approvals-empty').hidden = pending.length > 0;
  setCount('approvals-count', pending.length);
  setText($('approvals-history-count'), done.length);

  const now = serverNow();
  const questions = [...state.questions.values()].sort((a, b) => (a.target != null) - (b.target != null) || a.id - b.id);
  const shown = questions.filter((q) => q.answered_at == null || (state.lingering.get(q.id) || 0) > now);
  const answered = questions.filter((q) => q.answered_at != null).sort((a, b) => b.answered_at - a.answered_at);
  reconcile($('questions'), shown, (q) => q.id, makeQuestion);
  reconcile($('questions-done'), answered, (q) => q.id, makeDone('question'));
  const openMine = questions.filter((q) => q.answered_at == null && q.target == null).length;
  $('questions-empty').hidden = shown.length > 0;
  setCount('questions-count', openMine);
  setText($('questions-history-count'), answered.length);

  const inbox = [...state.inbox.values()].sort((a, b) => b.id - a.id);
  reconcile($('inbox'), inbox, (m) => m.id, makeInbox);
  const unread = inbox.filter((m) => m.delivered_at == null).length;
  $('inbox-empty').hidden = inbox.length > 0;
  setCount('inbox-count', unread);
  $('inbox-read').disabled = unread === 0;
  return pending.length + openMine + unread;
}

export const lingerFor = (state, id) => state.lingering.set(id, serverNow() + LINGER_SECONDS);
