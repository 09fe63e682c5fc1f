"""CURVE on TCP endpoints.

A node's sockets on ``tcp://`` endpoints are CURVE servers (its secret key); a client or a
worker must know the node's public key to connect at all, and its traffic is encrypted.
Which caller may do what is then decided by the control tokens (which a ``tcp://`` control
endpoint must have). ``ipc://`` endpoints need none of this: their socket files are 0600,
by default in the 0700 data directory.
"""

from __future__ import annotations

import struct
from typing import Any

import zmq
from zmq.utils import z85

from tamma_actors._errors import ConfigError

__all__ = ["curve_client", "curve_server", "is_curve_key", "keypair", "public_key_of"]

_KEY_CHARS = 40  # z85 text of a 32-byte key


def keypair() -> tuple[str, str]:
    """A new (public, secret) CURVE key pair, z85 text."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def is_curve_key(key: str) -> bool:
    """Whether ``key`` is a CURVE key: z85 text of 40 characters standing for 32 bytes."""
    if len(key) != _KEY_CHARS:
        return False
    try:
        z85.decode(key)
    except (ValueError, KeyError, struct.error):  # not ASCII, not z85, a group over 2**32
        return False
    return True


def public_key_of(secret_key: str) -> str:
    """The public half of the key pair whose secret is ``secret_key`` (a valid key)."""
    try:
        return zmq.curve_public(secret_key.encode("ascii")).decode("ascii")
    except zmq.ZMQError as exc:  # a libzmq built without CURVE
        raise ConfigError(f"curve_secret_key: this libzmq cannot use CURVE keys: {exc}") from exc


def curve_server(sock: zmq.Socket[Any], endpoint: str, secret_key: str | None) -> None:
    """Make ``sock`` a CURVE server when it is about to bind a TCP endpoint with a key."""
    if secret_key is None or not endpoint.startswith("tcp://"):
        return
    try:
        sock.curve_server = True
        sock.curve_secretkey = secret_key.encode("ascii")
    except (zmq.ZMQError, UnicodeEncodeError) as exc:
        raise ConfigError(f"curve_secret_key is not a valid z85 CURVE key: {exc}") from exc


def curve_client(sock: zmq.Socket[Any], endpoint: str, server_key: str | None) -> None:
    """Before connecting ``sock`` to a TCP endpoint served with CURVE: an ephemeral key pair
    of our own, and the server's public key (which authenticates the server)."""
    if server_key is None or not endpoint.startswith("tcp://"):
        return
    public, secret = keypair()
    try:
        sock.curve_serverkey = server_key.encode("ascii")
        sock.curve_publickey = public.encode("ascii")
        sock.curve_secretkey = secret.encode("ascii")
    except (zmq.ZMQError, UnicodeEncodeError) as exc:
        raise ConfigError(f"the node's CURVE public key is not a valid z85 key: {exc}") from exc
