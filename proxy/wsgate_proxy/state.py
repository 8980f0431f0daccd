"""The last good config on local disk, so a restarted proxy serves at once.

Written after every successful apply (to a temporary file, flushed to disk, then
renamed into place, so a crash never leaves half a file), read once at start. The
file holds JWT HMAC secrets and TLS private keys: it is created 0600 (never readable
by others, not even for an instant) in a directory kept at 0700. Writing (several MB
with 10k consumers, and an fsync) happens on a thread of its own, in order, so a save
never holds the event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from .config import ITEM_FIELDS, GatewayConfig


class HasConfig(Protocol):
    @property
    def config(self) -> GatewayConfig: ...

log = logging.getLogger("wsgate.state")

FILENAME = "config.json"


class StateDir:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILENAME
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # an existing directory too: it holds secrets
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="wsgate-state")
        # The config to save next; a burst of changes makes one save of the latest.
        self._next: HasConfig | None = None
        self._lock = threading.Lock()

    def save_soon(self, active: HasConfig) -> None:
        """Save an active config on the writer thread (the whole config is put together
        there too). Saves happen in order; one asked for while another waits replaces
        it."""
        with self._lock:
            waiting, self._next = self._next is not None, active
        if not waiting:
            self._writer.submit(self._save_next)

    def _save_next(self) -> None:
        with self._lock:
            active, self._next = self._next, None
        if active is not None:
            self.save(active.config)

    def close(self) -> None:
        """Wait for the saves asked for so far."""
        self._writer.shutdown(wait=True)

    def load(self) -> GatewayConfig | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the saved config",
                        extra={"path": str(self.path), "error": exc.strerror})
            return None
        try:
            config = GatewayConfig.model_validate_json(text)
        except ValidationError as exc:
            log.warning("the saved config is not valid; starting without it",
                        extra={"path": str(self.path), "errors": exc.error_count()})
            return None
        if config.version != config.content_hash():
            log.warning("the saved config does not match its version; starting without it",
                        extra={"path": str(self.path)})
            return None
        return config

    def save(self, config: GatewayConfig) -> None:
        directory = self.path.parent
        tmp = None
        try:
            # mkstemp creates the file 0600 and with a name of its own.
            fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", dir=directory)
            with os.fdopen(fd, "wb") as file:
                # Item by item: one call serialising ten thousand consumers would hold
                # the interpreter (and the event loop) for its whole length.
                file.write(f'{{"version":{json.dumps(config.version)}'.encode())
                for field in ITEM_FIELDS.values():
                    file.write(f',"{field}":['.encode())
                    for i, item in enumerate(getattr(config, field)):
                        file.write(b"," if i else b"")
                        file.write(item.model_dump_json().encode())
                    file.write(b"]")
                file.write(b"}")
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
            tmp = None
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself survives a crash
            finally:
                os.close(dir_fd)
        except OSError as exc:
            log.error("cannot save the config; a restart will wait for a new push",
                      extra={"path": str(self.path), "error": exc.strerror})
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
