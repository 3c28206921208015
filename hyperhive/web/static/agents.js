// SW4RM: the agents (a tree by parent) and the kept state of destroyed ones.
import { $, h, setText, setAttr, reconcile, bytes, ago } from './dom.js';
import { act, askDialog, confirmDialog, openDrawer, getJSON } from './ui.js';

// What the harness puts in the status text when it is stuck (and close variants).
const NEEDS_LOGIN = /\bneeds?[ _-]?log ?in\b|\bnot logged in\b|\blogin required\b/i;
const RATE_LIMITED = /\brate[ _-]?limit|\busage limit\b/i;
// The harness's status text while it compacts the agent's claude session.
const COMPACTING = /^⟳ compacting\b/;
const LIFECYCLE = [['start', 'ST4RT'], ['kill', 'ST0P'], ['restart', 'R3ST4RT'], ['rebuild', 'R3BU1LD']];

// Depth-first by parent, alphabetical, the manager first; orphans and cycles become roots.
export function agentTree(agents) {
  const byName = new Map(agents.map((a) => [a.name, a]));
  const children = new Map();
  const roots = [];
  for (const a of agents) {
    if (a.parent && a.parent !== a.name && byName.has(a.parent)) {
      if (!children.has(a.parent)) children.set(a.parent, []);
      children.get(a.parent).push(a);
    } else roots.push(a);
  }
  const order = (a, b) => (b.role === 'manager') - (a.role === 'manager') || a.name.localeCompare(b.name);
  const out = [];
  const seen = new Set();
  const walk = (agent, prefix, last, depth) => {
    if (seen.has(agent.name)) return;
    seen.add(agent.name);
    out.push({ agent, branch: depth ? prefix + (last ? '└─ ' : '├─ ') : '' });
    const kids = (children.get(agent.name) || []).sort(order);
    const inner = depth ? prefix + (last ? '   ' : '│  ') : '';
    kids.forEach((kid, i) => walk(kid, inner, i === kids.length - 1, depth + 1));
  };
  roots.sort(order).forEach((a) => walk(a, '', true, 0));
  agents.filter((a) => !seen.has(a.name)).sort(order).forEach((a) => walk(a, '', true, 0));
  return out;
}

// The agent and everything below it (by parent), for the parent picker: never a cycle.
function below(agents, root) {
  const found = new Set([root]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const a of agents) {
      if (!found.has(a.name) && found.has(a.parent)) { found.add(a.name); grew = true; }
    }
  }
  return found;
}

function badge(cls, text, title) {
  return h('span', { class: `badge ${cls}`, title, hidden: true, text });
}

function show(el, visible, text) {
  el.hidden = !visible;
  if (visible && text !== undefined) setText(el, text);
}

function makeAgent(state) {
  return ({ agent: first }) => {
    let agent = first;
    const branch = h('span', { class: 'branch', 'aria-hidden': 'true' });
    const name = h('span', { class: 'name', text: first.name });
    const role = badge('role', 'manager');
    const lead = badge('role', 'lead', 'lead = true: may run lifecycle verbs below it');
    const stateBadge = h('span', { class: 'badge state' });
    const since = h('span', { class: 'since' });
    const transient = h('span', { class: 'badge transient', hidden: true }, h('span'), ' · ', since);
    const crashLoop = badge('bad', 'CR4SH L00P', 'crashed too often: start it by hand');
    const login = badge('warn', 'needs login', 'the status says it needs a login');
    const rate = badge('warn', '⊘ rate limited', 'the status says it is rate limited');
    const compacting = badge('compacting', '⟳ compacting', "its harness compacts claude's session");
    const harness = h('span', { class: 'badge harness' });
    const unread = badge('unread', '');
    const reminders = badge('reminders', '');
    const model = h('span', { class: 'model' });
    const backend = h('span', { class: 'backend' });
    const isolation = badge('warn', 'no isolation', 'this backend runs agents as plain processes');
    const node = h('span', { class: 'node', title: 'the node (daemon) serving it' });
    const unreachable = badge('bad', 'unreachable', 'its node is not up: its messages wait until it returns');
    const pid = h('span', { class: 'pid' });
    const disk = h('span', { class: 'disk', title: 'its dir and proposed config on disk' });
    const paused = badge('warn paused', '⏸ P4US3D', 'paused: it is handed no messages until resumed');
    const pausedWhy = h('p', { class: 'paused-reason', hidden: true });
    const pause = h('button', {
      type: 'button', class: 'pause', text: 'P4US3', 'aria-label': `pause ${first.name}`,
      onclick: async (e) => {
        const button = e.currentTarget;
        if (agent.paused_at != null) {
          act(button, 'resume', { names: [agent.name] }, { done: `resumed ${agent.name}` });
          return;
        }
        const reason = await askDialog({
          title: `P4US3 ${agent.name}?`,
          text: 'It is handed no messages (so runs no turns) until resumed; they wait in its inbox.',
          ok: 'P4US3',
          label: 'Reason (shown wherever it is listed)',
        });
        if (reason !== null) act(button, 'pause', { names: [agent.name], reason }, { done: `paused ${agent.name}` });
      },
    });
    const spend = h('span', { class: 'spend', title: 'spend from the ledger: today (since midnight UTC) and in total' });
    const ctx = h('span', { class: 'ctx', title: 'context tokens of the last turn' });
    const status = h('p', { class: 'status', hidden: true });
    const warning = h('p', { class: 'warning', hidden: true });
    const buttons = LIFECYCLE.map(([verb, label]) => h('button', {
      type: 'button', text: label, 'aria-label': `${verb} ${first.name}`,
      onclick: (e) => act(e.currentTarget, verb, { name: agent.name }, { done: `${verb}: ${agent.name}` }),
    }));
    // Re-parenting: every agent but itself and those below it (the daemon checks again).
    const parent = h('select', {
      class: 'parent', 'aria-label': `parent of ${first.name}`, title: 'move below another agent',
      onchange: async (e) => {
        const select = e.currentTarget;
        const to = select.value;
        const done = await act(select, 'set_parent', { child: agent.name, parent: to }, { done: `${agent.name} is now below ${to}` });
        if (!done) select.value = agent.parent || 'manager';
      },
    });
    let choices = '';
    const link = h('a', { class: 'ui-link', target: '_blank', rel: 'noopener noreferrer', hidden: true, text: '↗ UI', 'aria-label': `${first.name}'s own page` });
    const logs = h('button', { type: 'button', text: 'L0GS', 'aria-label': `logs of ${first.name}`, onclick: () => showLogs(agent.name) });
    const destroy = h('button', {
      type: 'button', class: 'danger', text: 'DESTR0Y', 'aria-label': `destroy ${first.name}`,
      onclick: async (e) => {
        const button = e.currentTarget;
        const ok = await confirmDialog({
          title: `DESTR0Y ${agent.name}?`,
          text: 'The container goes away; its state is kept and can be revived or purged later.',
          ok: 'DESTR0Y',
        });
        if (ok) act(button, 'destroy', { name: agent.name }, { done: `${agent.name} destroyed; state kept` });
      },
    });
    const el = h('article', { class: 'row agent', 'data-name': first.name, 'aria-label': `agent ${first.name}` },
      h('div', { class: 'info' },
        h('div', { class: 'line' }, branch, name, role, lead, stateBadge, transient, crashLoop, unreachable, paused, login, rate, compacting, harness, unread, reminders, link),
        h('div', { class: 'line meta' }, node, model, backend, isolation, pid, spend, ctx, disk),
        pausedWhy, status, warning),
      h('div', { class: 'actions' }, pause, parent, ...buttons, logs, destroy));
    const update = ({ agent: a, branch: b }) => {
      agent = a;
      setText(branch, b);
      setAttr(el, 'data-state', a.state);
      show(role, a.role === 'manager');
      show(lead, !!a.lead);
      parent.hidden = a.role === 'manager';
      const all = [...state.agents.values()];
      const banned = below(all, a.name);
      const names = all.map((x) => x.name).filter((n) => !banned.has(n)).sort();
      if (names.join(' ') !== choices) {
        choices = names.join(' ');
        parent.replaceChildren(...names.map((n) => h('option', { value: n, text: `↳ ${n}` })));
      }
      if (parent.getAttribute('aria-busy') !== 'true') parent.value = a.parent || 'manager';
      setText(stateBadge, a.state.replace('_', ' '));
      setAttr(stateBadge, 'data-state', a.state);
      show(transient, !!a.transient);
      if (a.transient) {
        setText(transient.firstChild, `⟳ ${a.transient}`);
        setAttr(since, 'data-since', a.transient_since ?? '');
      }
      show(crashLoop, a.state === 'crash_loop');
      const isPaused = a.paused_at != null;
      setAttr(el, 'data-paused', isPaused ? 'yes' : null);
      show(paused, isPaused);
      show(pausedWhy, isPaused, `⏸ paused by ${a.paused_by} ${isPaused ? ago(a.paused_at) : ''}${a.paused_reason ? `: ${a.paused_reason}` : ''}`);
      setText(pause, isPaused ? 'R3SUM3' : 'P4US3');
      setAttr(pause, 'aria-label', `${isPaused ? 'resume' : 'pause'} ${a.name}`);
      show(login, NEEDS_LOGIN.test(a.status_text));
      show(rate, RATE_LIMITED.test(a.status_text));
      show(compacting, COMPACTING.test(a.status_text));
      setText(harness, a.harness_connected ? '● connected' : '○ no harness');
      setAttr(harness, 'data-on', a.harness_connected ? 'yes' : 'no');
      show(unread, a.unread > 0, `✉ ${a.unread}`);
      setAttr(unread, 'title', `${a.unread} unread`);
      show(reminders, a.pending_reminders > 0, `⏰ ${a.pending_reminders}`);
      setAttr(reminders, 'title', `${a.pending_reminders} pending reminders`);
      // The agent's UI through this dashboard (same login); a path of ours, never script.
      const url = /^\/agent\/[a-z][a-z0-9-]{0,8}\/$/.test(a.ui_url || '') ? a.ui_url : null;
      link.hidden = !url;
      setAttr(link, 'href', url);
      setText(model, a.model);
      setText(backend, a.backend);
      // Its node, when the hive has several; unreachable while that node is not up.
      setText(node, state.nodes.length > 1 && a.node ? `@${a.node}` : '');
      const away = a.node_status != null && a.node_status !== 'up';
      setAttr(el, 'data-unreachable', away ? 'yes' : null);
      show(unreachable, away, `unreachable: node ${a.node} ${a.node_status}`);
      show(isolation, state.isolated[a.backend] === false);
      setText(pid, a.pid ? `pid ${a.pid}` : '');
      setText(disk, a.disk_bytes == null ? '' : `⛁ ${bytes(a.disk_bytes)}`);
      setText(spend, `$${(a.cost_today_usd ?? 0).toFixed(2)} today · $${(a.cost_total_usd ?? 0).toFixed(2)} total`);
      setText(ctx, a.ctx_tokens == null ? '' : `ctx ${a.ctx_tokens.toLocaleString('en')}`);
      show(status, !!a.status_text, a.status_text);
      show(warning, !!a.warning, `⚠ ${a.warning}`);
      const external = a.backend === 'external';
      const hint = external ? 'the external backend starts nothing: run its harness by hand' : null;
      for (const b2 of [...buttons, logs]) { b2.disabled = external; setAttr(b2, 'title', hint); }
      destroy.hidden = a.role === 'manager';
    };
    return { el, update };
  };
}

function showLogs(name) {
  openDrawer(`L0GS · ${name}`, (body, tools) => {
    const lines = h('select', { 'aria-label': 'lines' },
      ...[50, 200, 500].map((n) => h('option', { value: n, text: `${n} lines` })));
    lines.value = '200';
    const load = async () => {
      body.textContent = 'loading…';
      try {
        const data = await getJSON(`/api/logs/${encodeURIComponent(name)}?lines=${lines.value}`);
        body.textContent = data.lines.join('\n') || '(empty)';
        body.scrollTop = body.scrollHeight;
      } catch (err) {
        body.textContent = `error: ${err.message}`;
      }
    };
    lines.addEventListener('change', load);
    tools.append(lines, h('button', { type: 'button', text: '↻ refresh', onclick: load }));
    load();
  });
}

function makeTombstone(t0) {
  let t = t0;
  const size = h('span', { class: 'size' });
  const age = h('span', { class: 'age' });
  const revive = h('button', {
    type: 'button', text: 'R3V1V3', 'aria-label': `revive ${t0.name}`,
    onclick: (e) => act(e.currentTarget, 'revive', { name: t.name }, {
      done: (r) => `revive of ${t.name} asked: approve #${r.approval.id} in Y3R C4LL`,
    }),
  });
  const purge = h('button', {
    type: 'button', class: 'danger', text: 'PURG3', 'aria-label': `purge ${t0.name}`,
    onclick: async (e) => {
      const button = e.currentTarget;
      const ok = await confirmDialog({
        title: `PURG3 ${t.name}?`,
        text: 'This deletes its state, notes, credentials and config history for good, with the messages, reminders, questions and schedules waiting for it. No undo.',
        ok: 'PURG3',
        typed: t.name,
      });
      if (ok) act(button, 'destroy', { name: t.name, purge: true }, { done: `${t.name} purged` });
    },
  });
  const el = h('article', { class: 'row tomb', 'data-name': t0.name, 'aria-label': `kept state of ${t0.name}` },
    h('div', { class: 'line' }, h('span', { class: 'name', text: t0.name }), size, age),
    h('div', { class: 'actions' }, revive, purge));
  return {
    el,
    update(next) {
      t = next;
      setText(size, bytes(t.size_bytes));
      setText(age, `last change ${ago(t.modified_at)}`);
    },
  };
}

export function renderAgents(state) {
  const agents = [...state.agents.values()];
  reconcile($('agents'), agentTree(agents), (r) => r.agent.name, makeAgent(state));
  $('agents-empty').hidden = agents.length > 0;
  setText($('agents-count'), `· ${agents.length}`);
  reconcile($('kept'), state.tombstones, (t) => t.name, makeTombstone);
  $('kept-empty').hidden = state.tombstones.length > 0;
  setText($('kept-count'), state.tombstones.length ? `· ${state.tombstones.length}` : '');
  return agents.length;
}
