"""Schema of ``broker.sqlite``: forward migrations, one function per ``user_version`` step."""

from __future__ import annotations

import sqlite3
from typing import Final

from hyperhive.store._db import Migration


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Run statements one by one: ``executescript`` would commit the migration's transaction."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement.strip()[:80]}")


def _v1(conn: sqlite3.Connection) -> None:
    _execute_script(
        conn,
        """
        CREATE TABLE agents (
            name        TEXT PRIMARY KEY,
            role        TEXT NOT NULL,          -- 'agent' | 'manager'
            state       TEXT NOT NULL,          -- see hyperhive.registry.AgentState
            backend     TEXT NOT NULL,
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL,
            parent      TEXT,
            status_text TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE messages (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            sender       TEXT NOT NULL,
            recipient    TEXT NOT NULL,
            body         TEXT NOT NULL,
            sent_at      REAL NOT NULL,
            delivered_at REAL,
            acked_at     REAL,
            in_reply_to  INTEGER,
            redelivered  INTEGER NOT NULL DEFAULT 0,
            transient    INTEGER NOT NULL DEFAULT 0
        );
        -- The inbox: what a recipient still has to receive or acknowledge, in id order.
        CREATE INDEX messages_unacked ON messages (recipient, id) WHERE acked_at IS NULL;
        CREATE INDEX messages_recipient ON messages (recipient, id);
        CREATE INDEX messages_acked_at ON messages (acked_at) WHERE acked_at IS NOT NULL;
        CREATE TABLE approvals (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            agent        TEXT NOT NULL,
            kind         TEXT NOT NULL,         -- 'spawn' | 'apply_commit'
            commit_ref   TEXT,
            requested_at REAL NOT NULL,
            status       TEXT NOT NULL,         -- 'pending' | 'approved' | 'denied' | 'failed'
            resolved_at  REAL,
            note         TEXT,
            description  TEXT,
            fetched_sha  TEXT,
            requested_by TEXT NOT NULL
        );
        -- At most one pending approval per (agent, kind, commit_ref).
        CREATE UNIQUE INDEX approvals_one_pending
            ON approvals (agent, kind, IFNULL(commit_ref, '')) WHERE status = 'pending';
        CREATE TABLE operator_questions (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            asker        TEXT NOT NULL,
            target       TEXT,                  -- NULL = the operator
            question     TEXT NOT NULL,
            options_json TEXT NOT NULL DEFAULT '[]',
            multi        INTEGER NOT NULL DEFAULT 0,
            asked_at     REAL NOT NULL,
            deadline_at  REAL,
            answered_at  REAL,
            answer       TEXT,
            answerer     TEXT
        );
        CREATE INDEX questions_open ON operator_questions (id) WHERE answered_at IS NULL;
        """,
    )


def _v2(conn: sqlite3.Connection) -> None:
    """Container supervision: transients, the running payload, the crash history."""
    _execute_script(
        conn,
        """
        ALTER TABLE agents ADD COLUMN transient TEXT;
        ALTER TABLE agents ADD COLUMN transient_since REAL;
        ALTER TABLE agents ADD COLUMN pid INTEGER;
        ALTER TABLE agents ADD COLUMN start_ticks INTEGER;
        ALTER TABLE agents ADD COLUMN run_started_at REAL;
        ALTER TABLE agents ADD COLUMN crash_times_json TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE agents ADD COLUMN crash_streak INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE agents ADD COLUMN last_exit INTEGER;
        ALTER TABLE agents ADD COLUMN warning TEXT;
        """,
    )


def _v3(conn: sqlite3.Connection) -> None:
    """Who resolved an approval (``operator``, or ``system`` when it failed on its own)."""
    conn.execute("ALTER TABLE approvals ADD COLUMN decided_by TEXT")


def _v4(conn: sqlite3.Connection) -> None:
    """The operations journal (see :mod:`hyperhive.journal`)."""
    _execute_script(
        conn,
        """
        CREATE TABLE operations (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            kind        TEXT NOT NULL,          -- 'approve' | 'destroy' | 'purge'
            agent       TEXT NOT NULL,
            approval_id INTEGER UNIQUE,         -- the approval being carried out
            started_at  REAL NOT NULL
        );
        """,
    )


def _v5_pause(conn: sqlite3.Connection) -> None:
    """Pause: since when an agent is paused (NULL: not paused), why, and by whom."""
    _execute_script(
        conn,
        """
        ALTER TABLE agents ADD COLUMN paused_at REAL;
        ALTER TABLE agents ADD COLUMN paused_reason TEXT;
        ALTER TABLE agents ADD COLUMN paused_by TEXT;
        """,
    )


def _v8_schedules(conn: sqlite3.Connection) -> None:
    """Scheduled prompts (see :mod:`hyperhive.schedules`) and the specs awaiting approval."""
    _execute_script(
        conn,
        """
        CREATE TABLE schedules (
            id               INTEGER PRIMARY KEY AUTOINCREMENT,
            owner            TEXT NOT NULL,      -- agent name or 'operator'
            targets_json     TEXT NOT NULL,      -- JSON list of agent names
            body             TEXT NOT NULL,
            description      TEXT,
            interval_seconds INTEGER,            -- NULL: cron, or one-shot
            cron             TEXT,
            timezone         TEXT NOT NULL,
            next_at          REAL,               -- NULL once ended
            created_at       REAL NOT NULL,
            source           TEXT NOT NULL,      -- 'operator' | 'approval:<id>'
            ended_at         REAL,
            last_fired_at    REAL,
            fires            INTEGER NOT NULL DEFAULT 0,
            skipped          INTEGER NOT NULL DEFAULT 0,
            last_skipped     INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX schedules_due ON schedules (next_at) WHERE ended_at IS NULL;
        CREATE TABLE schedule_requests (
            approval_id INTEGER PRIMARY KEY,     -- the approval of kind 'schedule'
            spec_json   TEXT NOT NULL
        );
        """,
    )


def _v7_reminders(conn: sqlite3.Connection) -> None:
    """Reminders (see :mod:`hyperhive.reminders`): one row per ``remind``, until cancelled."""
    _execute_script(
        conn,
        """
        CREATE TABLE reminders (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            agent         TEXT NOT NULL,        -- whose own inbox it lands in
            body          TEXT NOT NULL,
            file_path     TEXT,                 -- in-container path the body is written to
            due_at        REAL NOT NULL,
            created_at    REAL NOT NULL,
            sent_at       REAL,                 -- NULL while pending
            message_id    INTEGER,              -- the message it became
            attempt_count INTEGER NOT NULL DEFAULT 0,
            last_error    TEXT
        );
        CREATE INDEX reminders_pending ON reminders (agent, due_at) WHERE sent_at IS NULL;
        """,
    )


def _v6_ledger(conn: sqlite3.Connection) -> None:
    """The spend ledger (see :mod:`hyperhive.ledger`): one row per reported claude run."""
    _execute_script(
        conn,
        """
        CREATE TABLE ledger_turns (
            id                    INTEGER PRIMARY KEY AUTOINCREMENT,
            agent                 TEXT NOT NULL,
            report_id             TEXT NOT NULL,  -- the harness's id: a resent report counts once
            recorded_at           REAL NOT NULL,
            message_id            INTEGER,
            model                 TEXT NOT NULL,
            outcome               TEXT NOT NULL,
            input_tokens          INTEGER NOT NULL,
            output_tokens         INTEGER NOT NULL,
            cache_read_tokens     INTEGER NOT NULL,
            cache_creation_tokens INTEGER NOT NULL,
            cost_micros           INTEGER NOT NULL,  -- USD * 1e6, summed exactly
            duration_seconds      REAL NOT NULL,
            tool_calls            INTEGER NOT NULL,
            tools_json            TEXT NOT NULL DEFAULT '{}',
            ctx_tokens            INTEGER,
            progress              INTEGER NOT NULL  -- 1: sent, asked or changed a file
        );
        CREATE UNIQUE INDEX ledger_turns_report ON ledger_turns (agent, report_id);
        CREATE INDEX ledger_turns_agent_time ON ledger_turns (agent, recorded_at);
        CREATE INDEX ledger_turns_time ON ledger_turns (recorded_at);
        CREATE TABLE ledger_crashes (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            agent      TEXT NOT NULL,
            crashed_at REAL NOT NULL
        );
        """,
    )


def _v9_nodes(conn: sqlite3.Connection) -> None:
    """Nodes (see :mod:`hyperhive.nodes`): the daemons sharing one store, where each agent
    is placed, the commands one node asks another to carry out, the events every node
    shows."""
    _execute_script(
        conn,
        """
        ALTER TABLE agents ADD COLUMN node TEXT NOT NULL DEFAULT '';
        CREATE TABLE nodes (
            name          TEXT PRIMARY KEY,
            host          TEXT NOT NULL,
            pid           INTEGER NOT NULL,
            started_at    REAL NOT NULL,
            heartbeat_at  REAL NOT NULL,
            stopped_at    REAL,                 -- NULL while it runs (or died unannounced)
            dashboard_url TEXT
        );
        CREATE TABLE node_commands (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            node         TEXT NOT NULL,         -- the node that carries it out
            agent        TEXT,
            origin       TEXT NOT NULL,         -- the node that asked
            request_json TEXT NOT NULL,
            created_at   REAL NOT NULL,
            expires_at   REAL NOT NULL,         -- not carried out after this
            taken_at     REAL,
            done_at      REAL,
            reply_json   TEXT,
            error        TEXT
        );
        CREATE INDEX node_commands_open ON node_commands (node, id) WHERE done_at IS NULL;
        CREATE TABLE hive_events (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            node       TEXT NOT NULL,          -- where it happened
            at         REAL NOT NULL,
            event_json TEXT NOT NULL
        );
        """,
    )


def _v10_decided_on_node(conn: sqlite3.Connection) -> None:
    """Which node journaled an operation and decided an approval (NULL: one node only, or
    from before nodes): another node's approval being carried out is not an interrupted one,
    and a late second decision is told where the first was made."""
    _execute_script(
        conn,
        """
        ALTER TABLE operations ADD COLUMN node TEXT;
        ALTER TABLE approvals ADD COLUMN decided_node TEXT;
        """,
    )


def _v11_approval_placement(conn: sqlite3.Connection) -> None:
    """Approvals across nodes: ``node``, where a spawn goes (NULL: placed when approved);
    an apply_commit's ``agent_toml`` (the proposal's text; its commit is ``fetched_sha``)
    and ``deploy_node``, the agent's node asked to deploy it from the database (see
    docs/multi-node.md)."""
    _execute_script(
        conn,
        """
        ALTER TABLE approvals ADD COLUMN node TEXT;
        ALTER TABLE approvals ADD COLUMN agent_toml TEXT;
        ALTER TABLE approvals ADD COLUMN deploy_node TEXT;
        """,
    )


def _v12_agent_facts(conn: sqlite3.Connection) -> None:
    """What each agent's node knows of it from its files and its harness (model, claude
    login, harness connected, lead, credentials), for the other nodes' views."""
    _execute_script(
        conn,
        """
        CREATE TABLE agent_facts (
            name           TEXT PRIMARY KEY,
            node           TEXT NOT NULL,    -- the node that wrote it (the agent's)
            model          TEXT NOT NULL,
            logged_in      INTEGER NOT NULL,
            harness        INTEGER NOT NULL,
            lead           INTEGER NOT NULL,
            credentials_ok INTEGER NOT NULL,
            at             REAL NOT NULL
        );
        """,
    )


BROKER_MIGRATIONS: Final[tuple[Migration, ...]] = (
    _v1,
    _v2,
    _v3,
    _v4,
    _v5_pause,
    _v6_ledger,
    _v7_reminders,
    _v8_schedules,
    _v9_nodes,
    _v10_decided_on_node,
    _v11_approval_placement,
    _v12_agent_facts,
)
