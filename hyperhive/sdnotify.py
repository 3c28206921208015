"""systemd's notify protocol (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``), when asked for."""

from __future__ import annotations

import contextlib
import os
import socket

import attrs


@attrs.define
class Notifier:
    """Sends datagrams to ``NOTIFY_SOCKET``; does nothing when it is unset."""

    address: str | None
    watchdog_usec: int | None

    @classmethod
    def from_env(cls) -> Notifier:
        address = os.environ.get("NOTIFY_SOCKET") or None
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        watchdog = int(usec) if usec and usec.isdigit() and int(usec) > 0 else None
        if pid and pid.isdigit() and int(pid) != os.getpid():
            watchdog = None  # meant for another process
        return cls(address, watchdog)

    @property
    def watchdog_interval(self) -> float | None:
        """Ping at half the watchdog timeout, as systemd recommends."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def notify(self, state: str) -> None:
        if not self.address:
            return
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]
        # If the service manager went away there is nobody to tell.
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
            contextlib.suppress(OSError),
        ):
            sock.sendto(state.encode(), address)
