"""The last good config on local disk, so a restarted proxy serves at once.

Written after every successful apply (to a temporary file, then renamed into place,
so a crash never leaves half a file), read once at start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import ValidationError

from .config import GatewayConfig

log = logging.getLogger("wsgate.state")

FILENAME = "config.json"


class StateDir:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILENAME
        directory.mkdir(parents=True, exist_ok=True)

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
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(config.model_dump_json(), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot save the config; a restart will wait for a new push",
                      extra={"path": str(self.path), "error": exc.strerror})
