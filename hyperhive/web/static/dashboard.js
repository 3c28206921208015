// The operator dashboard: one /api/state snapshot, then the /api/stream event stream.
// Events are applied to the in-memory state where that is easy, otherwise a (throttled)
// refetch of the snapshot; either way the view is re-rendered with keyed, in-place updates.
import { $, setText, tickClocks, setServerNow, serverNow, bytes, ago } from './dom.js';
import { getJSON, LoggedOut, setCsrf, toast, act } from './ui.js';
import { renderAgents } from './agents.js';
import { renderCalls, lingerFor } from './calls.js';
import { renderFlow, setupComposer, flowToBottom } from './flow.js';
import { renderReminders } from './reminders.js';
import { setupNotifications, notify } from './notify.js';
import { renderSchedules, setupScheduleForm } from './schedules.js';
// Every kind the daemon publishes (EventSource only delivers kinds it listens for),
// served from the daemon's own list (hyperhive.kinds.EventKind).
import { EVENT_KINDS } from './kinds.js';

const FLOW_KEEP = 1000;
const INBOX_KEEP = 200;
const RECENT_KEEP = 2000;

const state = {
  seq: 0,
  agents: new Map(),
  isolated: {},
  nodes: [],
  tombstones: [],
  approvals: new Map(),
  questions: new Map(),
  reminders: new Map(),
  inbox: new Map(),
  flow: new Map(),
  lingering: new Map(),
  spend: { today: 0, total: 0 },
  schedules: new Map(),
};
const recent = []; // events seen on the stream, re-applied on top of a newer snapshot
let streamSeq = 0;
let stream = null;
let loggedOut = false;

const byId = (items) => new Map(items.map((x) => [x.id, x]));

function load(snap) {
  state.seq = snap.seq;
  setCsrf(snap.csrf);
  setServerNow(snap.now);
  setText($('version'), `v${snap.version}`);
  showDisk(snap.state_dir_bytes);
  state.spend = { today: snap.spend.today_usd, total: snap.spend.total_usd };
  state.nodes = snap.nodes ?? [];
  // This dashboard's node, on a hive of several.
  setText($('backend'), `${state.nodes.length > 1 ? `node ${snap.node} · ` : ''}backend ${snap.backend}`);
  // The daemon's own: failed parts, low space, disk full; and each node that is down
  // (or stopped with agents placed on it).
  const lines = [
    ...snap.problems,
    ...state.nodes.filter((n) => n.status === 'down' || (n.status !== 'up' && n.agents > 0)).map((n) => `node ${n.name} is ${n.status} (last heartbeat ${ago(n.heartbeat_at)}): ${n.agents} agent${n.agents === 1 ? '' : 's'} unreachable, messages to ${n.agents === 1 ? 'it' : 'them'} wait`),
  ];
  const problems = $('problems');
  problems.replaceChildren(...lines.map((p) => Object.assign(document.createElement('li'), { textContent: `⚠ ${p}` })));
  problems.hidden = lines.length === 0;
  state.agents = new Map(snap.agents.map((a) => [a.name, a]));
  state.isolated = snap.isolated;
  state.tombstones = snap.tombstones;
  state.approvals = byId(snap.approvals);
  state.questions = byId(snap.questions);
  state.reminders = byId(snap.reminders);
  state.inbox = byId(snap.inbox);
  state.schedules = byId(snap.schedules);
  // Merged, so lines older than the snapshot's window stay on screen; kept in id order.
  const flow = [...state.flow.values(), ...snap.flow].sort((a, b) => a.id - b.id);
  state.flow = new Map();
  for (const m of flow) keep(state.flow, m, FLOW_KEEP);
  for (const e of recent) if (e.seq > snap.seq) apply(e.kind, e.data, false);
}

function showDisk(total) {
  setText($('disk'), total == null ? '' : `state ${bytes(total)}`);
}

// Add a message to a bounded map (ids only grow, so the first key is the oldest).
function keep(map, m, limit) {
  map.set(m.id, m);
  while (map.size > limit) map.delete(map.keys().next().value);
}

// An agent not known yet is on its way: its agent_registered event takes a snapshot.
function patchAgent(name, fields) {
  const agent = state.agents.get(name);
  if (agent) state.agents.set(name, { ...agent, ...fields });
}

// Apply one event to the state; `live` is false when re-applying over a newer snapshot.
function apply(kind, d, live) {
  switch (kind) {
    case 'sent': {
      const m = { id: d.id, from: d.sender, to: d.recipient, body: d.body, sent_at: d.sent_at, in_reply_to: d.in_reply_to, delivered_at: null };
      if (!state.flow.has(m.id)) keep(state.flow, m, FLOW_KEEP);
      if (m.to === 'operator' && !state.inbox.has(m.id)) {
        keep(state.inbox, { ...m }, INBOX_KEEP);
        if (live) notify(`✉ from ${m.from}`, m.body, `message-${m.id}`);
      }
      const agent = state.agents.get(m.to);
      if (agent) patchAgent(m.to, { unread: agent.unread + 1 });
      break;
    }
    case 'delivered':
      for (const map of [state.flow, state.inbox]) {
        const m = map.get(d.id);
        if (m && m.delivered_at == null) map.set(d.id, { ...m, delivered_at: d.ts });
      }
      if (!d.redelivered && state.agents.has(d.recipient)) {
        patchAgent(d.recipient, { unread: Math.max(0, state.agents.get(d.recipient).unread - 1) });
      }
      break;
    case 'agent_changed': {
      const pid = d.state === 'running' ? state.agents.get(d.name)?.pid : null; // only while running
      patchAgent(d.name, { state: d.state, transient: d.transient, transient_since: d.transient_since, warning: d.warning, pid });
      break;
    }
    case 'status_changed':
      patchAgent(d.name, { status_text: d.status_text });
      break;
    case 'disk_usage_changed':
      showDisk(d.total);
      for (const [name, size] of Object.entries(d.agents)) patchAgent(name, { disk_bytes: size });
      break;
    case 'model_changed':
      patchAgent(d.name, { model: d.model });
      break;
    case 'parent_changed':
      patchAgent(d.name, { parent: d.parent });
      break;
    case 'harness_connected':
    case 'harness_disconnected':
      patchAgent(d.name, { harness_connected: kind === 'harness_connected' });
      refetchSoon(); // a harness saying hello gets its unacked messages again: unread changes
      break;
    case 'agent_paused':
      patchAgent(d.name, { paused_at: d.paused_at, paused_reason: d.reason, paused_by: d.by });
      break;
    case 'agent_resumed':
      patchAgent(d.name, { paused_at: null, paused_reason: null, paused_by: null });
      break;
    case 'container_started':
      patchAgent(d.name, { pid: d.pid });
      break;
    case 'spend_changed':
      patchAgent(d.name, { cost_today_usd: d.cost_today_usd, cost_total_usd: d.cost_total_usd, ctx_tokens: d.ctx_tokens });
      state.spend = { today: d.hive_cost_today_usd, total: d.hive_cost_total_usd };
      break;
    case 'question_added':
    case 'question_resolved': {
      const q = d.question;
      const before = state.questions.get(q.id);
      state.questions.set(q.id, q);
      if (live && kind === 'question_added' && q.target == null) notify(`? ${q.asker} asks`, q.question, `question-${q.id}`);
      if (live && kind === 'question_resolved' && before && before.answered_at == null) lingerFor(state, q.id);
      break;
    }
    case 'approval_added':
    case 'approval_resolved': {
      const a = d.approval;
      state.approvals.set(a.id, a);
      if (live && kind === 'approval_added') notify(`◆ approval #${a.id}`, `${a.kind} ${a.agent}${a.description ? `: ${a.description}` : ''}`, `approval-${a.id}`);
      break;
    }
    case 'reminder_changed': {
      const r = d.reminder;
      const before = state.reminders.has(r.id);
      if (d.removed || r.sent_at != null) state.reminders.delete(r.id);
      else state.reminders.set(r.id, r);
      const now = state.reminders.has(r.id);
      const agent = state.agents.get(r.agent);
      if (agent && before !== now) patchAgent(r.agent, { pending_reminders: Math.max(0, agent.pending_reminders + (now ? 1 : -1)) });
      break;
    }
    case 'schedule_changed':
      state.schedules.set(d.schedule.id, d.schedule);
      break;
    default: // registered, destroyed, purged, crashes, vacuum: take a fresh snapshot
      refetchSoon();
  }
}

// ------------------------------------------------------------------ snapshot and stream

let refetchTimer = null;
let refetching = false;
let refetchAgain = false;

// While a snapshot is in flight an event needs no other: either the snapshot has it, or
// it is newer and load() applies it again, asking for one more snapshot then if need be.
function refetchSoon(delay = 150) {
  if (refetchTimer == null && !refetching) refetchTimer = setTimeout(refetch, delay);
}

async function refetch() {
  refetchTimer = null;
  if (refetching) { refetchAgain = true; return; }
  refetching = true;
  let snap;
  try {
    snap = await getJSON('/api/state');
  } catch (err) {
    if (err instanceof LoggedOut) endSession();
    else toast(`could not load the state: ${err.message}`, 'error');
  }
  refetching = false;
  if (snap) load(snap);
  schedule();
  if (refetchAgain) { refetchAgain = false; refetchSoon(); }
}

function onEvent(ev) {
  const data = JSON.parse(ev.data);
  if (ev.type === 'resync') {
    streamSeq = data.seq;
    refetch();
    return;
  }
  if (data.seq <= streamSeq) return;
  streamSeq = data.seq;
  recent.push({ seq: data.seq, kind: ev.type, data });
  if (recent.length > RECENT_KEEP) recent.splice(0, recent.length - RECENT_KEEP);
  if (data.seq <= state.seq) return; // already part of the snapshot
  apply(ev.type, data, true);
  schedule();
}

function connect() {
  if (loggedOut) return;
  // `since` for the first connection; EventSource sends Last-Event-ID on its own reconnects.
  stream = new EventSource(`/api/stream?since=${streamSeq}`);
  stream.onopen = () => showConnection('live', '● live');
  stream.onerror = () => {
    if (stream.readyState === EventSource.CONNECTING) {
      showConnection('reconnecting', '○ reconnecting…');
      return;
    }
    showConnection('offline', '✕ offline — retrying');
    stream.close();
    getJSON('/api/state').then(() => setTimeout(connect, 2000), (err) => {
      if (err instanceof LoggedOut) endSession();
      else setTimeout(connect, 5000);
    });
  };
  for (const kind of EVENT_KINDS) stream.addEventListener(kind, onEvent);
}

function showConnection(kind, text) {
  const el = $('conn');
  el.dataset.state = kind;
  setText(el, text);
}

function endSession() {
  loggedOut = true;
  if (stream) stream.close();
  showConnection('offline', '✕ logged out');
  const banner = $('banner');
  banner.textContent = 'The session ended (was the dashboard token replaced?). Open the login link that hyperhive dashboard-url prints.';
  banner.hidden = false;
}

// ------------------------------------------------------------------ rendering

let renderTimer = null;

function schedule() {
  if (renderTimer == null) renderTimer = setTimeout(render, 16);
}

function render() {
  renderTimer = null;
  const agents = renderAgents(state);
  const calls = renderCalls(state);
  renderFlow(state);
  setText($('spend'), `spend $${state.spend.today.toFixed(2)} today · $${state.spend.total.toFixed(2)} total`);
  renderReminders(state);
  setText($('pill-schedules'), renderSchedules(state));
  setText($('pill-swarm'), agents);
  setText($('pill-call'), calls);
  $('pill-call').classList.toggle('hot', calls > 0);
  document.title = calls > 0 ? `(${calls}) hyperhive` : 'hyperhive';
  tickClocks();
}

let ticks = 0;
function tick() {
  tickClocks();
  ticks += 1;
  const now = serverNow();
  let expired = false;
  for (const [id, until] of state.lingering) {
    if (until < now + 1) { state.lingering.delete(id); expired = true; }
  }
  if (expired || ticks % 15 === 0) schedule(); // ages ("3m ago") refresh now and then
}

// ------------------------------------------------------------------ chrome

function showTab() {
  const tab = (location.hash || '#swarm').slice(1);
  const known = ['swarm', 'call', 'flow', 'schedules'].includes(tab) ? tab : 'swarm';
  for (const view of document.querySelectorAll('.view')) view.hidden = view.id !== `view-${known}`;
  for (const link of document.querySelectorAll('.tabs a')) {
    if (link.dataset.tab === known) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (known === 'flow') flowToBottom();
}

function setupForms() {
  const spawn = $('spawn-form');
  spawn.addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = spawn.elements.name.value.trim();
    const description = spawn.elements.description.value.trim() || null;
    const node = spawn.elements.node.value.trim() || null;
    const result = await act(spawn.querySelector('button'), 'request_spawn', { name, description, node }, {
      out: spawn.querySelector('output'),
      done: (r) => `approval #${r.approval.id} waits below`,
    });
    if (result) spawn.reset();
  });
  const read = $('inbox-read');
  read.addEventListener('click', async () => {
    await act(read, 'inbox', {}, { done: (r) => `${r.messages.length} messages marked read` });
    schedule(); // the button's state follows the unread count again
  });
  $('flow-new').addEventListener('click', flowToBottom);
}

async function boot() {
  window.addEventListener('hashchange', showTab);
  showTab();
  setupNotifications();
  setupComposer(state);
  setupForms();
  setupScheduleForm();
  try {
    load(await getJSON('/api/state'));
  } catch (err) {
    if (err instanceof LoggedOut) endSession();
    else toast(`could not load the state: ${err.message}`, 'error');
    return;
  }
  streamSeq = state.seq;
  render();
  document.body.dataset.ready = 'true';
  connect();
  setInterval(tick, 1000);
}

boot();
