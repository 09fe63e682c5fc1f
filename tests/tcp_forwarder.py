"""A TCP forwarder on loopback whose connections can be frozen: a frozen connection relays
nothing either way and is never closed (no FIN, no RST), as one through a network cut or
a NAT that forgot it looks to both of its ends; connections made after relay as usual."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass

__all__ = ["Forwarder"]

_JOIN_TIMEOUT = 10.0


@dataclass(eq=False)
class _Pair:
    ends: tuple[socket.socket, socket.socket]  # (accepted from the client, to the target)
    frozen: bool = False
    closed: bool = False


class Forwarder:
    """Forwards ``127.0.0.1:port`` (its own, chosen by the system) to ``target_port``."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tcp-forwarder", daemon=True)
        self._thread.start()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connections(self) -> int:
        """How many connections it has accepted."""
        with self._lock:
            return len(self._pairs)

    def freeze(self) -> int:
        """Freeze every connection open now; how many."""
        with self._lock:
            live = [p for p in self._pairs if not p.frozen and not p.closed]
            for pair in live:
                pair.frozen = True
        return len(live)

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                if key.data == "wake":
                    self._wake_r.recv(64)
                elif key.data is None:
                    self._accept()
                else:
                    self._relay(*key.data)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        try:
            target = socket.create_connection(self._target, timeout=_JOIN_TIMEOUT)
        except OSError:
            client.close()
            return
        pair = _Pair((client, target))
        with self._lock:
            self._pairs.append(pair)
        for side, end in enumerate(pair.ends):
            self._selector.register(end, selectors.EVENT_READ, (pair, side))

    def _relay(self, pair: _Pair, side: int) -> None:
        source, sink = pair.ends[side], pair.ends[1 - side]
        with self._lock:
            frozen = pair.frozen
        if frozen:  # read nothing more from it: what comes stays in the kernel's buffers
            self._selector.unregister(source)
            return
        try:
            data = source.recv(1 << 16)
            if data:
                sink.sendall(data)
                return
        except OSError:
            pass
        self._close(pair)

    def _close(self, pair: _Pair) -> None:
        with self._lock:
            pair.closed = True
        for end in pair.ends:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(end)
            end.close()

    def close(self) -> None:
        """Stop relaying and close every connection (the frozen ones too); idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._wake_w.send(b"x")
        self._thread.join(_JOIN_TIMEOUT)
        assert not self._thread.is_alive(), "the forwarder did not stop"
        for pair in self._pairs:
            for end in pair.ends:
                end.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()
