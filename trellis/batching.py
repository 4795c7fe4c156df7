"""A thread that takes work in groups: everything put while it was busy is handled at once (group commit).
Used by the online writer (event log, then state) and the decision log."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class WriterClosed(RuntimeError):
    """Work put after ``close``."""


class Stage:
    """A thread that takes everything put meanwhile (at least one item, at most ``limit`` by ``size``), hands
    it to ``handle``, and what that returns to the next stage ``then``. Every item's future gets an answer:
    whatever ``handle`` raises ends the futures it left open. ``close`` lets the items already put through,
    then stops this stage and the next."""

    def __init__(self, name: str, handle: Any, size: Any, then: Stage | None = None, *,
                 limit: int):
        self.handle, self.size, self.then, self.limit = handle, size, then, limit
        self._items: deque[Any] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        with self._ready:
            if self._closed:
                raise WriterClosed(f"the {self._thread.name} writer is closed")
            self._items.append(item)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()
        if self.then is not None:
            self.then.close()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._items and not self._closed:
                    self._ready.wait()
                if not self._items:
                    return
                taken = [self._items.popleft()]
                total = self.size(taken[0])
                while self._items and total + self.size(self._items[0]) <= self.limit:
                    total += self.size(self._items[0])
                    taken.append(self._items.popleft())
            try:
                out = self.handle(taken)
                if self.then is not None and out:
                    for item in out:
                        self.then.put(item)
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets an answer
                for item in taken:
                    future = (item[0] if isinstance(item, tuple) else item).future
                    if not future.done():
                        future.set_exception(exc)


__all__ = ["Stage", "WriterClosed"]
