"""What each socket's requests do: one dispatcher, the caller's identity from the socket.

Agent and manager sockets act as the agent the socket belongs to; only the host socket
carries operator authority. Nothing in a request names its caller.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import hyperhive
from hyperhive.broker import Outgoing, check_body, check_wake_label
from hyperhive.config import MAX_STATUS_TEXT, PROTOCOL_VERSION
from hyperhive.errors import RequestRefused
from hyperhive.hive import Hive
from hyperhive.kinds import BackendChoice, ConnectionRole, PeerRole
from hyperhive.names import MANAGER, OPERATOR, InvalidAgentName, parse_agent_name
from hyperhive.protocol import (
    Ack,
    AckReply,
    AgentMetaReply,
    AgentReply,
    AgentsReply,
    Answer,
    ApprovalReply,
    Approvals,
    ApprovalsReply,
    Approve,
    Ask,
    CancelLooseEnd,
    CancelQuestion,
    Compact,
    Deny,
    Destroy,
    Empty,
    GetAgentMeta,
    GetLogs,
    GetLooseEnds,
    Hello,
    HelloReply,
    HostAnswer,
    HostRequestSpawn,
    HostSend,
    HostStatus,
    HostStatusReply,
    IdReply,
    Inbox,
    Kill,
    List,
    ListContainers,
    Logs,
    LooseEndsReply,
    Pending,
    QuestionReply,
    Questions,
    QuestionsReply,
    Rebuild,
    Recent,
    RecentReply,
    Recv,
    RecvReply,
    Reply,
    Request,
    RequestApplyCommit,
    RequestSpawn,
    Restart,
    Revive,
    Send,
    SendReply,
    SetModel,
    SetStatus,
    Spawn,
    Start,
    Status,
    StatusReply,
    Tombstones,
    TombstonesReply,
    Update,
    Vacuum,
    VacuumReply,
    Wake,
)
from hyperhive.protocol.event_payloads import HarnessConnected, HarnessDisconnected
from hyperhive.runtime import agent_ui
from hyperhive.server import Connection, SocketKind
from hyperhive.store import DatabaseFailed


def _name(raw: str, *, allow_manager: bool = True) -> str:
    try:
        return parse_agent_name(raw, allow_manager=allow_manager)
    except InvalidAgentName as exc:
        raise RequestRefused(str(exc)) from None


class Api:
    def __init__(
        self, hive: Hive, *, dashboard_url: Callable[[], str | None] = lambda: None
    ) -> None:
        self.hive = hive
        #: The dashboard's login URL for ``status``, kept by whoever serves the dashboard.
        self.dashboard_url = dashboard_url

    async def dispatch(self, conn: Connection, request: Request) -> Reply:
        try:
            return await self._dispatch(conn, request)
        except OSError as exc:
            self.hive.refuse_if_disk_full(exc)
            raise
        except DatabaseFailed:
            # The daemon is about to stop and says why once; the caller just learns it.
            raise RequestRefused("the daemon's database failed; it is stopping") from None

    async def _dispatch(self, conn: Connection, request: Request) -> Reply:
        if isinstance(request, Hello):
            return await self._hello(conn, request)
        if conn.principal.kind is SocketKind.HOST:
            return await self._host(request)
        return await self._agent(conn.principal.name, conn.principal.kind, request)

    def blocks(self, request: Request) -> bool:
        return isinstance(request, Recv) and request.wait_seconds > 0

    async def reply_lost(self, conn: Connection, request: Request, reply: Reply) -> None:
        # Messages handed out in a reply nobody read go back to the inbox, as they were.
        if isinstance(reply, RecvReply) and reply.messages:
            await self.hive.broker.undeliver(conn.principal.name, [m.id for m in reply.messages])

    def closed(self, conn: Connection) -> None:
        if conn.role == ConnectionRole.HARNESS:
            self.hive.registry.harnesses[conn.principal.name] -= 1
            if self.hive.registry.harnesses[conn.principal.name] <= 0:
                del self.hive.registry.harnesses[conn.principal.name]
                self.hive.events.emit(HarnessDisconnected(name=conn.principal.name))

    async def _hello(self, conn: Connection, request: Hello) -> HelloReply:
        if request.protocol != PROTOCOL_VERSION:
            raise RequestRefused(
                f"protocol {request.protocol} is not supported; "
                f"this daemon speaks {PROTOCOL_VERSION}"
            )
        principal = conn.principal
        if request.role == ConnectionRole.HARNESS:
            if principal.kind is SocketKind.HOST:
                raise RequestRefused("a harness connects to an agent socket, not the host socket")
            if conn.role != ConnectionRole.HARNESS:
                self.hive.registry.harnesses[principal.name] += 1
                self.hive.events.emit(HarnessConnected(name=principal.name))
            # A harness saying hello starts afresh: what it took but never acked comes again.
            await self.hive.broker.requeue_unacked(principal.name)
        conn.role = request.role
        role = {SocketKind.HOST: PeerRole.OPERATOR, SocketKind.MANAGER: PeerRole.MANAGER}.get(
            principal.kind, PeerRole.AGENT
        )
        return HelloReply(protocol=PROTOCOL_VERSION, name=principal.name, role=role)

    # ------------------------------------------------------------ agent and manager sockets

    async def _agent(self, me: str, kind: SocketKind, request: Request) -> Reply:
        hive = self.hive
        match request:
            case Send(to=to, body=body, in_reply_to=in_reply_to):
                sent = await hive.broker.send(me, to, body, in_reply_to)
                return SendReply(id=sent[0].id, ids=[m.id for m in sent])
            case Recv(wait_seconds=wait, max=limit, ack=ack):
                messages = await hive.broker.recv(me, wait_seconds=wait, limit=limit, ack=ack)
                return RecvReply(messages=messages)
            case Ack(ids=ids):
                return AckReply(acked=await hive.broker.ack(me, ids))
            case Status():
                return StatusReply(unread=await hive.broker.unread(me))
            case Recent(limit=limit):
                return RecentReply(messages=await hive.broker.recent(me, limit))
            case Ask(question=q, options=options, multi=multi, ttl_seconds=ttl, to=to):
                info = await hive.questions.ask(me, q, options, multi, ttl, to)
                return IdReply(id=info.id)
            case Answer(id=qid, answer=answer):
                await hive.questions.answer_as_agent(me, qid, answer)
                return Empty()
            case GetLooseEnds():
                if kind is SocketKind.MANAGER:
                    return LooseEndsReply(
                        questions=await hive.questions.list(),
                        approvals=await hive.approvals.list(pending_only=True),
                    )
                return LooseEndsReply(
                    questions=await hive.questions.list(involving=me), approvals=[]
                )
            case CancelLooseEnd(id=qid):
                await hive.questions.cancel_as_agent(me, qid)
                return Empty()
            case Wake(from_=label, body=body, transient=transient):
                check_wake_label(label, hive.registry.known())
                check_body(body)
                sent = await hive.broker.inject([Outgoing(label, me, body, transient=transient)])
                return IdReply(id=sent[0].id)
            case SetStatus(text=text):
                if len(text) > MAX_STATUS_TEXT:
                    raise RequestRefused(f"status text is longer than {MAX_STATUS_TEXT} characters")
                await hive.registry.set_status_text(me, text)
                return Empty()
            case GetAgentMeta(name=name):
                record = hive.registry.get(_name(name) if name is not None else me)
                return AgentMetaReply(
                    name=record.name,
                    role=record.role,
                    model=hive.registry.model(record.name),
                    status_text=record.status_text,
                    parent=record.parent,
                    state=record.state,
                )
            case RequestSpawn(name=name, description=description):
                return ApprovalReply(approval=await hive.request_spawn(name, description, MANAGER))
            case RequestApplyCommit(agent=agent, commit_ref=ref, description=description):
                return ApprovalReply(
                    approval=await hive.request_apply_commit(agent, ref, description)
                )
            case Kill(name=name) | Start(name=name) | Restart(name=name) | Update(name=name):
                if _name(name) == MANAGER:
                    raise RequestRefused(f"the manager cannot {request.CMD} itself")
                await hive.lifecycle(request.CMD, name)
                return Empty()
            case ListContainers():
                return AgentsReply(agents=await hive.agent_infos())
            case GetLogs(agent=agent, lines=lines):
                return await hive.logs(_name(agent), lines)
        raise RequestRefused(f"{request.CMD!r} is not served on this socket")

    # ------------------------------------------------------------ host socket (operator)

    async def _host(self, request: Request) -> Reply:
        hive = self.hive
        match request:
            case HostStatus():
                unread = await hive.broker.unread_by_recipient()
                return HostStatusReply(
                    version=hyperhive.__version__,
                    protocol=PROTOCOL_VERSION,
                    pid=os.getpid(),
                    backend=BackendChoice(hive.backend),
                    started_at=hive.started_at,
                    agents=len(hive.registry.live()),
                    pending_approvals=len(await hive.approvals.list(pending_only=True)),
                    open_questions=len(await hive.questions.list()),
                    operator_unread=unread.get(OPERATOR, 0),
                    parked_receivers=hive.broker.parked(),
                    dashboard_url=self.dashboard_url(),
                    problems=hive.problems_now(),
                    credentials_warning=hive.credentials_warning(),
                )
            case List():
                return AgentsReply(agents=await hive.agent_infos())
            case Tombstones():
                return TombstonesReply(tombstones=await hive.tombstones())
            case Pending():
                return ApprovalsReply(approvals=await hive.approvals.list(pending_only=True))
            case Approvals(include_resolved=include_resolved):
                pending_only = not include_resolved
                return ApprovalsReply(
                    approvals=await hive.approvals.list(pending_only=pending_only)
                )
            case Approve(id=aid):
                return ApprovalReply(approval=await hive.approvals.approve(aid))
            case Deny(id=aid, note=note):
                return ApprovalReply(approval=await hive.approvals.deny(aid, note))
            case HostRequestSpawn(name=name, description=description):
                return ApprovalReply(approval=await hive.request_spawn(name, description, OPERATOR))
            case Spawn(name=name, backend=backend):
                record = await hive.spawn(name, backend=backend)
                return AgentReply(agent=await hive.agent_info(record))
            case Start(name=name) | Kill(name=name) | Restart(name=name) | Rebuild(name=name):
                await hive.lifecycle(request.CMD, _name(name))
                return Empty()
            case Destroy(name=name, purge=purge):
                await hive.destroy(_name(name), purge=purge)
                return Empty()
            case Revive(name=name):
                return ApprovalReply(approval=await hive.revive(_name(name)))
            case Questions(include_answered=include_answered):
                return QuestionsReply(
                    questions=await hive.questions.list(include_answered=include_answered)
                )
            case HostAnswer(id=qid, answer=answer):
                return QuestionReply(question=await hive.questions.answer_as_operator(qid, answer))
            case CancelQuestion(id=qid):
                return QuestionReply(question=await hive.questions.cancel_as_operator(qid))
            case HostSend(to=to, body=body, in_reply_to=in_reply_to):
                sent = await hive.broker.send(OPERATOR, to, body, in_reply_to)
                return SendReply(id=sent[0].id, ids=[m.id for m in sent])
            case Inbox(limit=limit):
                return RecentReply(messages=await hive.operator_inbox(limit))
            case SetModel(name=name, model=model):
                if not model.strip() or len(model) > 100 or any(c.isspace() for c in model):
                    raise RequestRefused("model must be one word of at most 100 characters")
                await hive.registry.set_model(_name(name), model)
                return Empty()
            case Logs(name=name, lines=lines):
                return await hive.logs(_name(name), lines)
            case Compact(name=name):
                agent = _name(name)
                hive.registry.get(agent)
                try:
                    status = await agent_ui.post(hive.config.paths.ui_socket(agent), "/api/compact")
                except agent_ui.AgentUiUnavailable as exc:
                    raise RequestRefused(f"{agent}'s harness cannot be reached: {exc}") from None
                if status != 200:
                    raise RequestRefused(f"{agent}'s harness refused the compaction ({status})")
                return Empty()
            case Vacuum():
                return VacuumReply(deleted=await hive.broker.vacuum(hive.config.retention_seconds))
        raise RequestRefused(f"{request.CMD!r} is not served on the host socket")
