"""Pykka's message semantics, written once for every actor runtime of ours.

``pykka.Actor._actor_loop_running`` and ``_actor_loop_teardown`` handle one envelope at a
time inside a blocking loop; our runtimes (a socket poller, a shared thread pool) cannot use
that loop, so these functions reproduce its body exactly:

- a message that raises while being *asked*: the exception is set on the caller's future;
- a message that raises while being *told*: ``_handle_failure`` (logs, unregisters, marks
  the actor stopped) then ``on_failure``; the actor stops;
- a ``BaseException`` (``SystemExit`` ...): the actor stops and every actor is asked to stop;
- when the actor stops, asks still in the inbox fail with ``ActorDeadError`` (a pending stop
  request is answered ``None``, as pykka does).

One deliberate difference: pykka leaves the caller of the message that raised a
``BaseException`` waiting forever; we fail that ask with ``ActorDeadError`` instead, because a
pending ask is never left hanging.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pykka import ActorDeadError, ActorRegistry, messages

if TYPE_CHECKING:
    import pykka
    from pykka._envelope import Envelope
    from pykka._types import OptExcInfo

__all__ = [
    "STOP_ALL_HOOKS",
    "fail_actor",
    "handle_envelope",
    "reject_envelope",
    "run_callback",
    "run_setup",
]

# Runtimes whose actors are not in pykka's registry (PoolActors: the registry is a list, so
# every stop would scan every live actor) add here how to stop theirs.
STOP_ALL_HOOKS: list[Callable[[], None]] = []

logger = logging.getLogger("pykka")


def run_setup(actor: pykka.Actor) -> None:
    """Run ``on_start``; if it raises the failure is logged and the actor is stopped."""
    actor._actor_loop_setup()


def fail_actor(actor: pykka.Actor, exc_info: OptExcInfo) -> None:
    """The path of a failing tell'd message: log, stop, then ``on_failure``."""
    actor._handle_failure(*exc_info)
    try:
        actor.on_failure(*exc_info)
    except Exception:
        actor._handle_failure(*sys.exc_info())


def _stop_everything(actor: pykka.Actor, *, block_stop_all: bool) -> None:
    logger.debug(f"{sys.exc_info()[1]!r} in {actor}. Stopping all actors.")
    actor._stop()
    ActorRegistry.stop_all(block=block_stop_all)
    for hook in list(STOP_ALL_HOOKS):
        hook()


def handle_envelope(
    actor: pykka.Actor, envelope: Envelope[Any], *, block_stop_all: bool = True
) -> None:
    """Handle one envelope exactly like one turn of pykka's ``_actor_loop_running``.

    ``block_stop_all=False`` is for runtimes whose actors share threads: waiting there for
    every other actor to stop could wait on the very thread we occupy.
    """
    try:
        response = actor._handle_receive(envelope.message)
        if envelope.reply_to is not None:
            envelope.reply_to.set(response)
    except Exception:
        if envelope.reply_to is not None:
            logger.info(f"Exception returned from {actor} to caller:", exc_info=sys.exc_info())
            envelope.reply_to.set_exception()
        else:
            fail_actor(actor, sys.exc_info())
    except BaseException:
        _reply_dead(actor, envelope)
        _stop_everything(actor, block_stop_all=block_stop_all)


def run_callback(
    actor: pykka.Actor, fn: Callable[[], None], *, block_stop_all: bool = True
) -> None:
    """Run a callback (a timer, a readable socket) on the actor as if it were a tell'd
    message: if it raises, the failure is logged, ``on_failure`` runs and the actor stops."""
    try:
        fn()
    except Exception:
        fail_actor(actor, sys.exc_info())
    except BaseException:
        _stop_everything(actor, block_stop_all=block_stop_all)


def reject_envelope(actor: pykka.Actor | str, envelope: Envelope[Any]) -> None:
    """Answer an envelope that arrived (or stayed) after the actor stopped; ``actor`` may
    be the stopped actor's name (``str(actor.actor_ref)``) once its inbox has let go of
    it."""
    if envelope.reply_to is None:
        return
    if isinstance(envelope.message, messages._ActorStop):
        envelope.reply_to.set(None)
    else:
        _reply_dead(actor, envelope)


def _reply_dead(actor: pykka.Actor | str, envelope: Envelope[Any]) -> None:
    if envelope.reply_to is None:
        return
    who = actor if isinstance(actor, str) else actor.actor_ref
    error = ActorDeadError(f"{who} stopped before handling the message")
    try:
        envelope.reply_to.set_exception(exc_info=(ActorDeadError, error, None))
    except Exception:  # already answered (queue.Full): the caller has its reply
        logger.debug("reply to %r was already set", envelope)
