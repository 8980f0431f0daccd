"""The saved config holds secrets: private to the proxy's user, and never half-written."""

from __future__ import annotations

import os
import stat

from tests.support import compile_objects, objects_for
from wsgate_proxy.config import GatewayConfig
from wsgate_proxy.runtime import Runtime
from wsgate_proxy.state import FILENAME, StateDir


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_config_file_is_0600_in_a_0700_directory_even_one_that_existed(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    state = StateDir(directory)
    config = GatewayConfig.model_validate(compile_objects(objects_for(9001)))
    state.save(config)
    assert mode(directory) == 0o700
    assert mode(directory / FILENAME) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == [FILENAME]  # no temporary left
    assert state.load() == config


def test_saving_over_a_world_readable_file_replaces_it_with_a_private_one(tmp_path):
    (tmp_path / FILENAME).write_text("{}")
    os.chmod(tmp_path / FILENAME, 0o644)
    state = StateDir(tmp_path)
    config = GatewayConfig.model_validate(compile_objects(objects_for(9001)))
    runtime = Runtime()
    runtime.apply(config)
    state.save_soon(runtime.active)  # the active config, put together on the writer thread
    state.close()
    assert mode(tmp_path / FILENAME) == 0o600
    assert state.load() == config
