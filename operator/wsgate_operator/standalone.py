"""Standalone mode: compile a manifest directory and keep serving it as it changes.

The same compiler the operator runs, fed from files instead of the API. A set that
does not compile cleanly is refused whole and the last good config stays in force,
so a half-edited file never takes routes away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import watchfiles

from wsgate_proxy.config import GatewayConfig

from .manifests import MANIFEST_SUFFIXES, compile_directory

log = logging.getLogger("wsgate.standalone")

ApplyConfig = Callable[[GatewayConfig], object]


def load_once(directory: Path, apply: ApplyConfig) -> bool:
    """Compile the directory and apply it; False (and the errors logged) when refused."""
    result = compile_directory(directory)
    for warning in result.warnings:
        log.warning("manifest problem", extra={"problem": warning})
    if result.errors:
        for error in result.errors:
            log.error("invalid manifest", extra={"problem": error})
        log.error(
            "manifests refused; the last good config stays in force",
            extra={"directory": str(directory), "errors": len(result.errors)},
        )
        return False
    assert result.compiled is not None
    apply(result.compiled.config)
    return True


async def watch(directory: Path, apply: ApplyConfig) -> None:
    """Load now, then again whenever a manifest under the directory changes."""
    load_once(directory, apply)
    async for _changes in watchfiles.awatch(
        directory, watch_filter=_is_manifest, debounce=200, step=50
    ):
        load_once(directory, apply)


def _is_manifest(_change: watchfiles.Change, path: str) -> bool:
    return path.endswith(MANIFEST_SUFFIXES) and not Path(path).name.startswith(".")
