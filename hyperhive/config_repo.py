"""The two config repos of an agent, and the git steps of an ``apply_commit`` approval.

* proposed (``<state>/proposed/<name>/config``, ``/agents/<name>/config`` in the manager's
  container): the manager edits and commits ``agent.toml`` there. Its content is untrusted:
  the core never runs git *inside* it. It only fetches from it (``git upload-pack``, which
  is meant to be safe on untrusted repositories), so hooks or config the manager plants
  there (``core.fsmonitor``, ``core.hooksPath``…) never run.
* applied (``<state>/applied/<name>``): core-only. ``main`` is what the agent runs with; tags
  record every approval: ``proposal/<id>`` (the fetched commit, immutable from then on),
  ``approved/<id>``, ``deployed/<id>``, and annotated ``failed/<id>`` (the error) and
  ``denied/<id>`` (the note).

Every git call runs with the user's global and system git config ignored and a fixed
identity, so it behaves the same on any machine. Failures become :class:`RequestRefused`
with a readable reason. A per-repo :class:`trio.Lock` serialises the operations on one repo.
The decisions (what a ref may be, which tag means what) are plain functions; the async
functions only run git.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Final, TypeVar

import trio

from hyperhive.agent_config import (
    AGENT_TOML,
    MAX_AGENT_TOML_BYTES,
    SEED_AGENT_TOML,
    AgentConfig,
    decode_agent_toml,
    load_agent_config,
)
from hyperhive.approvals import check_commit_ref
from hyperhive.config import MAX_DIFF_BYTES, MAX_TAG_MESSAGE_CHARS
from hyperhive.errors import RequestRefused

T = TypeVar("T")
log = logging.getLogger(__name__)

BRANCH: Final = "main"
GIT_NAME: Final = "hyperhive"
GIT_EMAIL: Final = "hyperhive@localhost"
#: The seed commit has fixed dates, so the proposed and the applied repo get the same sha
#: from the same content without either depending on the other's current state.
SEED_DATE: Final = "1767225600 +0000"  # 2026-01-01T00:00:00Z
SEED_MESSAGE: Final = "seed agent.toml\n"
FULL_SHA_RE: Final = re.compile(r"[0-9a-f]{40}")
#: Options given to every git call (a repo's own config cannot turn these back on).
GIT_OPTIONS: Final = (
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "gc.auto=0",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "tag.gpgSign=false",
    "-c",
    "advice.detachedHead=false",
    "-c",
    "init.defaultBranch=main",
    "-c",
    "transfer.fsckObjects=true",
)

# ---------------------------------------------------------------- rules (pure)


def check_approval_id(approval_id: int) -> int:
    if isinstance(approval_id, bool) or not isinstance(approval_id, int) or approval_id < 1:
        raise RequestRefused(f"approval id must be a positive integer, not {approval_id!r}")
    return approval_id


def tag_name(kind: str, approval_id: int) -> str:
    """``proposal/7``, ``approved/7``, ...: the tag recording one step of approval 7."""
    assert kind in {"proposal", "approved", "deployed", "failed", "denied"}
    return f"{kind}/{check_approval_id(approval_id)}"


def git_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git call: no user or system config, a fixed identity."""
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("GIT_")
    }
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME=GIT_NAME,
        GIT_AUTHOR_EMAIL=GIT_EMAIL,
        GIT_COMMITTER_NAME=GIT_NAME,
        GIT_COMMITTER_EMAIL=GIT_EMAIL,
        LC_ALL="C",
    )
    return env


def tag_message(text: str | None, fallback: str) -> str:
    """An annotated tag's message: the text (shortened if huge) or the fallback."""
    text = (text or "").replace("\x00", "").strip() or fallback
    if len(text) > MAX_TAG_MESSAGE_CHARS:
        text = text[:MAX_TAG_MESSAGE_CHARS] + "\n[… truncated]"
    return text + "\n"


def _short(sha: str) -> str:
    return sha[:12]


def _absolute(path: Path) -> str:
    return os.path.abspath(path)


def safe_directory_options(repo: Path) -> tuple[str, ...]:
    """Let git read a repo another uid owns (the manager's container may write as another uid)."""
    where = _absolute(repo)
    return ("-c", f"safe.directory={where}", "-c", f"safe.directory={where}/.git")


# ---------------------------------------------------------------- git (async)

_locks: dict[str, trio.Lock] = {}


@asynccontextmanager
async def _locked(*repos: Path) -> AsyncIterator[None]:
    """Hold the locks of these repos, always taken in the same order (so no deadlock)."""
    async with AsyncExitStack() as stack:
        for key in sorted({_absolute(repo) for repo in repos}):
            await stack.enter_async_context(_locks.setdefault(key, trio.Lock()))
        yield


class GitFailed(RequestRefused):
    """A git command exited non-zero; ``stderr`` is its text."""

    def __init__(self, message: str, stderr: str, returncode: int) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.returncode = returncode


async def _run_git(
    repo: Path,
    *args: str,
    stdin: bytes = b"",
    options: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    argv = ["git", *GIT_OPTIONS, *options, "-C", str(repo), *args]
    try:
        return await trio.run_process(
            argv,
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**git_env(), **(extra_env or {})},
        )
    except FileNotFoundError:
        raise RequestRefused("git is not installed (config repos need it)") from None


def _failure(what: str, repo: Path, proc: subprocess.CompletedProcess[bytes]) -> GitFailed:
    stderr = proc.stderr.decode("utf-8", "replace").strip()
    detail = "; ".join(
        line.removeprefix("fatal: ").removeprefix("error: ")
        for line in stderr.splitlines()
        if line.strip() and not line.startswith("hint:")
    )
    return GitFailed(
        f"{what} failed in {repo}: {detail or f'git exited with status {proc.returncode}'}",
        stderr,
        proc.returncode,
    )


async def _git_bytes(
    repo: Path,
    *args: str,
    stdin: bytes = b"",
    options: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    what: str | None = None,
) -> bytes:
    """Run ``git -C repo args``; return stdout, or raise :class:`GitFailed` saying what failed."""
    proc = await _run_git(repo, *args, stdin=stdin, options=options, extra_env=extra_env)
    if proc.returncode != 0:
        raise _failure(what or f"git {args[0]}", repo, proc)
    return proc.stdout


async def _git(repo: Path, *args: str, stdin: bytes = b"", what: str | None = None) -> str:
    out = await _git_bytes(repo, *args, stdin=stdin, what=what)
    return out.decode("utf-8", "replace")


async def _ok(repo: Path, *args: str) -> bool:
    """Whether a git command that answers a yes/no question by exit status says yes."""
    proc = await _run_git(repo, *args)
    if proc.returncode not in (0, 1):
        raise _failure(f"git {args[0]}", repo, proc)
    return proc.returncode == 0


async def _rev(repo: Path, ref: str) -> str | None:
    """The commit ``ref`` names in ``repo``, or None."""
    proc = await _run_git(
        repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"
    )
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


async def _tag_target(repo: Path, tag: str) -> str | None:
    """The commit a tag points at (through an annotated tag), or None when there is no tag."""
    return await _rev(repo, f"refs/tags/{tag}")


async def _tag_message(repo: Path, tag: str) -> str:
    """The message of an annotated tag ('' for a lightweight one)."""
    out = await _git(repo, "for-each-ref", "--format=%(contents)", f"refs/tags/{tag}")
    return out.strip()


async def _set_tag(repo: Path, tag: str, sha: str, message: str | None = None) -> None:
    """Create a tag (annotated when there is a message); one already at ``sha`` is kept."""
    existing = await _tag_target(repo, tag)
    if existing == sha:
        return
    if existing is not None:
        raise RequestRefused(
            f"tag {tag} already exists in {repo} at {_short(existing)}, not {_short(sha)}"
        )
    if message is None:
        await _git(repo, "tag", tag, sha)
    else:
        await _git(
            repo,
            "tag",
            "--annotate",
            "--cleanup=verbatim",
            "--file=-",
            tag,
            sha,
            stdin=message.encode("utf-8", "replace"),
        )


async def _is_repo(path: Path) -> bool:
    return await trio.Path(path, ".git").exists()


async def _need_repo(path: Path, role: str) -> None:
    if not await _is_repo(path):
        raise RequestRefused(f"there is no {role} config repo at {path}")


async def _proposal_sha(applied: Path, approval_id: int) -> str:
    tag = tag_name("proposal", approval_id)
    await _need_repo(applied, "applied")
    sha = await _tag_target(applied, tag)
    if sha is None:
        raise RequestRefused(
            f"approval {approval_id} has no fetched proposal (no tag {tag} in {applied})"
        )
    return sha


async def _main(applied: Path) -> str:
    sha = await _rev(applied, f"refs/heads/{BRANCH}")
    if sha is None:
        raise RequestRefused(f"the applied config repo {applied} has no {BRANCH} branch")
    return sha


async def _checkout_main(applied: Path, sha: str) -> None:
    """Point ``main`` (checked out) and the work tree at ``sha``."""
    await _git(applied, "symbolic-ref", "HEAD", f"refs/heads/{BRANCH}")
    await _git(applied, "reset", "--hard", "--quiet", sha)


async def _drop_refs(repo: Path, prefix: str) -> None:
    refs = await _git(repo, "for-each-ref", "--format=delete %(refname)", prefix)
    if refs.strip():
        await _git(repo, "update-ref", "--stdin", stdin=refs.encode())


# ---------------------------------------------------------------- seeding


def _prepare_staging(final: Path) -> Path:
    """An empty staging dir beside ``final``; refuse when ``final`` holds something else."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_symlink() or (final.exists() and (not final.is_dir() or any(final.iterdir()))):
        raise RequestRefused(f"{final} exists but is not a git repository; move it away first")
    staging = final.parent / f".{final.name}.seeding"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _install(staging: Path, final: Path) -> None:
    if final.exists():
        final.rmdir()  # checked empty by _prepare_staging
    staging.rename(final)


def _write_seed(staging: Path, seed: str) -> None:
    (staging / AGENT_TOML).write_text(seed, encoding="utf-8")


async def _fs(final: Path, fn: Callable[..., T], *args: object) -> T:
    """A blocking file-system step in a thread; an OSError becomes a readable refusal."""
    try:
        return await trio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        raise RequestRefused(f"cannot create the config repo at {final}: {exc}") from None


async def _seed_repo(final: Path, seed: str) -> None:
    """A new repo at ``final`` whose ``main`` is the one deterministic seed commit."""
    staging = await _fs(final, _prepare_staging, final)
    await _fs(final, _write_seed, staging, seed)
    await _git(staging, "init", "--quiet", f"--initial-branch={BRANCH}")
    await _set_identity(staging)
    await _git(staging, "add", "--", AGENT_TOML)
    await _git_bytes(
        staging,
        "commit",
        "--quiet",
        "--no-verify",
        f"--message={SEED_MESSAGE}",
        extra_env={"GIT_AUTHOR_DATE": SEED_DATE, "GIT_COMMITTER_DATE": SEED_DATE},
    )
    await _fs(final, _install, staging, final)


async def _clone_applied(applied: Path, final: Path) -> None:
    """A new proposed repo holding the applied ``main`` history (the manager builds on it)."""
    staging = await _fs(final, _prepare_staging, final)
    await _git(
        staging,
        "clone",
        "--quiet",
        "--no-tags",
        "--single-branch",
        f"--branch={BRANCH}",
        "--",
        _absolute(applied),
        ".",
    )
    await _git(staging, "remote", "remove", "origin")
    await _set_identity(staging)
    await _fs(final, _install, staging, final)


async def _set_identity(repo: Path) -> None:
    """A repo-local identity, so commits work where no global git identity exists."""
    await _git(repo, "config", "user.name", GIT_NAME)
    await _git(repo, "config", "user.email", GIT_EMAIL)


# ---------------------------------------------------------------- the operations


async def ensure_repos(proposed: Path, applied: Path, seed: str = SEED_AGENT_TOML) -> None:
    """Create whichever of the two repos is missing; do nothing to an existing one.

    Both new repos start at the same seed commit (``agent.toml`` = :data:`SEED_AGENT_TOML`,
    fixed dates, so the same sha in both). A missing proposed repo beside an existing applied
    one is cloned from the applied ``main``, so the manager's next commit fast-forwards it.
    Each repo is built in a staging dir and renamed into place, so a crash never leaves a
    half-made repo behind.
    """
    async with _locked(proposed, applied):
        if not await _is_repo(applied):
            await _seed_repo(applied, seed)
            if not await _is_repo(proposed):
                await _seed_repo(proposed, seed)
        elif not await _is_repo(proposed):
            await _clone_applied(applied, proposed)


async def fetch_proposal(proposed: Path, applied: Path, commit_ref: str, approval_id: int) -> str:
    """Resolve ``commit_ref`` among the proposed repo's branches and tags, fetch it into the
    applied repo and tag it ``proposal/<id>``; return its full sha.

    From then on the proposal is immutable: the manager may amend, reset or delete in the
    proposed repo without changing what the operator approves. Calling it again for the same
    id and commit returns the same sha; a different commit for an id already tagged is refused.
    """
    check_commit_ref(commit_ref)
    tag = tag_name("proposal", approval_id)
    async with _locked(proposed, applied):
        await _need_repo(applied, "applied")
        await _need_repo(proposed, "proposed")
        try:
            try:
                await _git_bytes(
                    applied,
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--no-recurse-submodules",
                    "--no-write-fetch-head",
                    "--",
                    _absolute(proposed),
                    "+refs/heads/*:refs/proposed/heads/*",
                    "+refs/tags/*:refs/proposed/tags/*",
                    options=safe_directory_options(proposed),
                    what="fetching from the proposed config repo",
                )
            except GitFailed as exc:
                # git quotes what it could not parse, and the manager can point files of
                # its repo at any host file: its message goes to the log, not to the caller.
                log.warning("fetching from %s failed: %s", proposed, exc.stderr.strip())
                raise RequestRefused(
                    f"fetching from the proposed config repo of {proposed.parent.name} failed "
                    f"(git exited with status {exc.returncode}; git's message is in the "
                    "daemon's log): is it a plain git repository?"
                ) from None
            sha = await _resolve_proposed(applied, commit_ref)
            await _set_tag(applied, tag, sha)
            return sha
        finally:
            with trio.CancelScope(shield=True):
                await _drop_refs(applied, "refs/proposed/")


def proposal_message(approval_id: int, sha: str) -> str:
    """The message of the commit a node makes from an approved agent.toml it got through
    the database (its proposal was fetched on the manager's node)."""
    return f"apply_commit approval {check_approval_id(approval_id)}: proposal {sha}\n"


async def has_proposal(applied: Path, approval_id: int) -> bool:
    """Whether proposal ``<id>`` is tagged in this applied repo."""
    async with _locked(applied):
        return await _tag_target(applied, tag_name("proposal", approval_id)) is not None


async def record_proposal(applied: Path, approval_id: int, agent_toml: str, sha: str) -> str:
    """Tag ``proposal/<id>`` at a new commit on top of the applied ``main`` whose
    ``agent.toml`` is ``agent_toml`` (the rest of ``main``'s tree kept), its message naming
    the approval and the proposal's commit ``sha`` in the manager's repo; return the new
    commit. For an agent whose proposals are fetched on another node (the manager's): the
    steps after it (:func:`approve_proposal`, :func:`mark_deployed`, …) are the ones of a
    fetched proposal. Idempotent: a proposal tagged already is returned as it is."""
    if FULL_SHA_RE.fullmatch(sha) is None:
        raise RequestRefused(f"proposal commit {sha[:50]!r} is not a full sha")
    data = agent_toml.encode("utf-8")
    if len(data) > MAX_AGENT_TOML_BYTES:
        raise RequestRefused(
            f"the proposed {AGENT_TOML} is larger than {MAX_AGENT_TOML_BYTES} bytes"
        )
    tag = tag_name("proposal", approval_id)
    async with _locked(applied):
        await _need_repo(applied, "applied")
        existing = await _tag_target(applied, tag)
        if existing is not None:
            return existing
        main = await _main(applied)
        blob = (await _git(applied, "hash-object", "-w", "--stdin", stdin=data)).strip()
        listing = await _git(applied, "ls-tree", "-z", main)
        entries = [e for e in listing.split("\0") if e and not e.endswith(f"\t{AGENT_TOML}")]
        entries.append(f"100644 blob {blob}\t{AGENT_TOML}")
        tree = (
            await _git(applied, "mktree", "-z", stdin=("\0".join(entries) + "\0").encode())
        ).strip()
        commit = (
            await _git(
                applied,
                "commit-tree",
                tree,
                "-p",
                main,
                "-F",
                "-",
                stdin=proposal_message(approval_id, sha).encode(),
            )
        ).strip()
        await _set_tag(applied, tag, commit)
        return commit


async def _resolve_proposed(applied: Path, commit_ref: str) -> str:
    proc = await _run_git(
        applied, "rev-parse", "--verify", "--end-of-options", f"{commit_ref}^{{commit}}"
    )
    if proc.returncode != 0:
        if b"ambiguous" in proc.stderr:
            raise RequestRefused(
                f"commit_ref {commit_ref} is ambiguous: several objects start with it; "
                "give more hex characters"
            )
        raise RequestRefused(
            f"commit {commit_ref} is not in the proposed config repo: commit there first, "
            "and give the id of a commit on a branch"
        )
    sha = proc.stdout.decode().strip()
    on = await _git(
        applied,
        "for-each-ref",
        "--count=1",
        "--contains",
        sha,
        "--format=%(refname)",
        "refs/proposed/",
    )
    if not on.strip():
        raise RequestRefused(
            f"commit {commit_ref} is not on any branch or tag of the proposed config repo "
            "(was it amended or reset away?)"
        )
    return sha


async def read_proposed_config(applied: Path, approval_id: int) -> str:
    """The ``agent.toml`` text of proposal ``<id>`` (read from the tag, not a work tree)."""
    async with _locked(applied):
        sha = await _proposal_sha(applied, approval_id)
        return await _read_blob(applied, sha, f"proposal {approval_id} ({_short(sha)})")


async def _read_blob(repo: Path, sha: str, label: str) -> str:
    listing = await _git(repo, "ls-tree", "-z", sha, "--", AGENT_TOML)
    entry = listing.rstrip("\0")
    if not entry:
        raise RequestRefused(f"{label} has no {AGENT_TOML} at the top of the repo")
    meta, _, _ = entry.partition("\t")
    mode, kind, oid = meta.split()
    if kind != "blob" or mode not in ("100644", "100755"):
        raise RequestRefused(f"{label}: {AGENT_TOML} is not a regular file (mode {mode})")
    size = int(await _git(repo, "cat-file", "-s", oid))
    if size > MAX_AGENT_TOML_BYTES:
        raise RequestRefused(f"{label}: {AGENT_TOML} is larger than {MAX_AGENT_TOML_BYTES} bytes")
    return decode_agent_toml(await _git_bytes(repo, "cat-file", "blob", oid))


async def approve_proposal(applied: Path, approval_id: int) -> str:
    """Tag ``approved/<id>`` and fast-forward ``main`` (and the work tree) to the proposal.

    Returns the previous ``main`` sha, which :func:`mark_failed` resets to if the rebuild
    fails. A proposal that does not build on the current ``main`` is refused (nothing is
    changed then). Repeating it for an approved id is harmless and returns the same sha.
    """
    async with _locked(applied):
        sha = await _proposal_sha(applied, approval_id)
        for kind in ("deployed", "failed", "denied"):
            if await _tag_target(applied, tag_name(kind, approval_id)) is not None:
                raise RequestRefused(f"approval {approval_id} is already {kind}")
        approved = tag_name("approved", approval_id)
        current = await _main(applied)
        previous = current
        if await _tag_target(applied, approved) is not None:
            previous = _previous_from_message(await _tag_message(applied, approved)) or current
        if current != sha and not await _ok(applied, "merge-base", "--is-ancestor", current, sha):
            raise RequestRefused(
                f"proposal {approval_id} ({_short(sha)}) does not build on the applied "
                f"config ({BRANCH} at {_short(current)}): rebase it onto that commit "
                "and propose again"
            )
        await _set_tag(applied, approved, sha, f"previous {BRANCH} {previous}\n")
        if current != sha:
            await _checkout_main(applied, sha)
        return previous


def _previous_from_message(message: str) -> str | None:
    match = re.fullmatch(rf"previous {BRANCH} ([0-9a-f]{{40}})", message.strip())
    return match[1] if match else None


async def mark_deployed(applied: Path, approval_id: int) -> None:
    """Tag ``deployed/<id>``: the agent runs with this proposal."""
    async with _locked(applied):
        sha = await _proposal_sha(applied, approval_id)
        if await _tag_target(applied, tag_name("approved", approval_id)) is None:
            raise RequestRefused(f"approval {approval_id} was not approved")
        if await _tag_target(applied, tag_name("failed", approval_id)) is not None:
            raise RequestRefused(f"approval {approval_id} already failed")
        await _set_tag(applied, tag_name("deployed", approval_id), sha)


async def mark_failed(
    applied: Path, approval_id: int, previous_main: str | None, error: str
) -> bool:
    """Tag ``failed/<id>`` annotated with ``error``; put ``main`` back at ``previous_main``.

    ``main`` is reset only while it still points at this proposal (so a failure reported
    before :func:`approve_proposal` moved it, with ``previous_main=None``, changes nothing
    else). Returns whether ``main`` was reset.
    """
    async with _locked(applied):
        sha = await _proposal_sha(applied, approval_id)
        if await _tag_target(applied, tag_name("deployed", approval_id)) is not None:
            raise RequestRefused(f"approval {approval_id} is already deployed")
        previous = None
        if previous_main is not None:
            if FULL_SHA_RE.fullmatch(previous_main) is None:
                raise RequestRefused(f"previous main {previous_main[:50]!r} is not a full sha")
            previous = await _rev(applied, previous_main)
            if previous is None:
                raise RequestRefused(f"previous main {previous_main} is not in {applied}")
        await _set_tag(applied, tag_name("failed", approval_id), sha, tag_message(error, "failed"))
        if previous is not None and previous != sha and await _main(applied) == sha:
            await _checkout_main(applied, previous)
            return True
        return False


async def recorded_outcome(applied: Path, approval_id: int) -> tuple[str, str] | None:
    """The outcome already recorded for proposal ``<id>``: ``("deployed", "")`` or
    ``("failed", error)``; None when neither tag exists.

    For an approval whose carrying out was interrupted: a ``failed/<id>`` tag whose ``main``
    reset did not happen yet gets it now (``main`` back at the ``approved/<id>`` tag's
    previous commit, while it still points at the proposal).
    """
    async with _locked(applied):
        sha = await _proposal_sha(applied, approval_id)
        if await _tag_target(applied, tag_name("deployed", approval_id)) is not None:
            return ("deployed", "")
        failed = tag_name("failed", approval_id)
        if await _tag_target(applied, failed) is None:
            return None
        error = await _tag_message(applied, failed)
        approved = tag_name("approved", approval_id)
        if await _tag_target(applied, approved) is not None:
            previous = _previous_from_message(await _tag_message(applied, approved))
            if previous is not None and previous != sha and await _main(applied) == sha:
                await _checkout_main(applied, previous)
        return ("failed", error)


async def mark_denied(applied: Path, approval_id: int, note: str | None) -> None:
    """Tag ``denied/<id>`` annotated with the operator's note (``denied`` when none)."""
    async with _locked(applied):
        sha = await _proposal_sha(applied, approval_id)
        if await _tag_target(applied, tag_name("approved", approval_id)) is not None:
            raise RequestRefused(f"approval {approval_id} is already approved")
        await _set_tag(applied, tag_name("denied", approval_id), sha, tag_message(note, "denied"))


async def diff_proposal(applied: Path, approval_id: int) -> str:
    """Unified diff from the applied ``main`` to proposal ``<id>`` (capped at 1 MiB)."""
    async with _locked(applied):
        sha = await _proposal_sha(applied, approval_id)
        main = await _main(applied)
        out = await _git_bytes(
            applied,
            "-c",
            "core.quotePath=false",
            "diff",
            "--no-ext-diff",
            "--no-textconv",
            "--no-color",
            main,
            sha,
            "--",
        )
    if len(out) > MAX_DIFF_BYTES:
        return out[:MAX_DIFF_BYTES].decode("utf-8", "replace") + "\n[… diff truncated]\n"
    return out.decode("utf-8", "replace")


async def applied_main(applied: Path) -> str:
    """The sha the applied ``main`` points at."""
    async with _locked(applied):
        await _need_repo(applied, "applied")
        return await _main(applied)


async def applied_config(applied: Path) -> AgentConfig:
    """The agent.toml in the applied work tree; the defaults when it has none."""
    async with _locked(applied):
        return await trio.to_thread.run_sync(load_agent_config, applied / AGENT_TOML)
