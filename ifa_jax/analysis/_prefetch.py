"""Batches adapted (host checks, padding, ``jax.device_put``) in a background thread, up to
``depth`` of them ahead of the step that uses them, so that reading the source and the
transfer to the device overlap the device's work on the previous batch."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()  # the source is exhausted


class _Raised:
    """An exception raised in the thread, to re-raise in the caller."""

    def __init__(self, error: BaseException):
        self.error = error


def prefetched(
    batches: Iterable[Any], adapt: Callable[[int, Any], T | None], depth: int
) -> Generator[tuple[int, T | None], None, None]:
    """``(i, adapt(i, batch))`` for every batch ``i`` of ``batches``, in order; ``adapt``
    returns None for a batch to skip.

    The batches up to the first one ``adapt`` does not skip are adapted in the caller's
    thread, so that the warnings of the first batch (such as the integer-input warning)
    reach the caller's ``warnings`` filters (those of another thread would not be caught
    by ``warnings.catch_warnings`` or ``pytest.warns``). The rest are read and adapted by
    one daemon thread, in order, at most ``depth`` of them ahead of the caller (``depth=0``:
    no thread, each batch adapted when asked for). An exception raised in the thread
    (reading the source or adapting a batch) is raised again in the caller, the same
    object. Closing the generator (``contextlib.closing``; the loop that uses it stopped
    by an exception) stops the thread and joins it, which waits for the batch it is
    reading at most.

    Args:
        batches: the source, iterated once.
        adapt: ``(i, batch) -> T`` or None (skip), e.g. the analysis'
            :class:`~ifa_jax.analysis.adapters.BatchAdapter`.
        depth: how many adapted batches may wait ahead of the caller, >= 0.

    Yields:
        ``(i, adapt(i, batch))``, i counting from 0.
    """
    it = iter(batches)
    count = itertools.count()
    for i, batch in zip(count, it):
        item = adapt(i, batch)
        yield i, item
        if item is not None:
            break
    else:
        return
    if depth == 0:
        for i, batch in zip(count, it):
            yield i, adapt(i, batch)
        return

    done: queue.SimpleQueue = queue.SimpleQueue()
    slots = threading.Semaphore(depth)  # one per adapted batch the caller has not taken
    stop = threading.Event()

    def work() -> None:
        try:
            while True:
                slots.acquire()
                if stop.is_set():
                    return
                batch = next(it, _END)
                if batch is _END:
                    done.put(_END)
                    return
                i = next(count)
                done.put((i, adapt(i, batch)))
        except BaseException as error:  # noqa: BLE001 - every error goes to the caller
            done.put(_Raised(error))

    thread = threading.Thread(target=work, name="ifa_jax-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = done.get()
            if got is _END:
                return
            if isinstance(got, _Raised):
                raise got.error
            slots.release()
            yield got
    finally:
        stop.set()
        slots.release()  # wakes the thread if it waits for a slot; it then sees stop
        thread.join()
