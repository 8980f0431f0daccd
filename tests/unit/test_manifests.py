from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support import QUICKSTART, copy_quickstart
from wsgate_operator.manifests import FileCache, SafeLoader, _documents, compile_directory


def test_quickstart_directory_compiles():
    result = compile_directory(QUICKSTART)
    assert result.errors == []
    assert result.warnings == []
    assert [r.key for r in result.compiled.config.routes] == ["default/echo"]


def test_invalid_spec_is_reported_with_file_object_and_field(tmp_path):
    directory = copy_quickstart(tmp_path, 1, 2)
    route = directory / "route.yaml"
    route.write_text(route.read_text().replace("type: Prefix", "type: Regex"))
    (error,) = compile_directory(directory).errors
    assert error.startswith(f"{route}: WsRoute default/echo: spec.paths[0].type: ")
    assert "'Exact' or 'Prefix'" in error


def test_yaml_errors_carry_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: WsRoute\nmetadata: {name: x\n")
    (error,) = compile_directory(tmp_path).errors
    assert error.startswith(f"{bad}:3:")
    assert "invalid YAML" in error


def test_wrong_api_version_missing_name_and_duplicates(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "apiVersion: wsgate.io/v1\nkind: WsRoute\nmetadata: {name: r}\n---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
    )
    (tmp_path / "b.yml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n")
    errors = compile_directory(tmp_path).errors
    assert any("WsRoute has apiVersion 'wsgate.io/v1'; expected 'wsgate.io/v1alpha1'" in e
               for e in errors)
    assert any("(document 2): Secret has no metadata.name" in e for e in errors)
    assert any(e.startswith(str(tmp_path / "b.yml")) and "also defined in" in e for e in errors)


def test_other_kinds_and_hidden_files_are_ignored(tmp_path):
    directory = copy_quickstart(tmp_path, 1, 2)
    (directory / "deploy.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\n"
                                           "metadata: {name: d}\n")
    (directory / ".route.yaml.swp").write_text("{{{ not yaml")
    assert compile_directory(directory).errors == []


def test_unresolved_references_are_warnings_not_errors(tmp_path):
    directory = copy_quickstart(tmp_path, 1, 2)
    (directory / "backend.yaml").unlink()
    result = compile_directory(directory)
    assert result.errors == []
    (warning,) = result.warnings
    assert warning.startswith(f"{directory / 'route.yaml'}: WsRoute default/echo: ")
    assert "does not exist" in warning


def test_not_a_directory():
    assert compile_directory(Path("/nonexistent/dir")).errors == [
        "/nonexistent/dir: not a directory"]


STREAMS = [
    "a: 1\n",
    "---\na: 1\n---\nb: [2, 3]\n",
    "# only a comment\n---\na: 1\n---\n",
    "a: 1\n--- |\n  text\n---\nb: 2\n--- # comment\nc: 3\n",
    "---\r\na: 1\r\n---\r\nb: 2\r\n",
    "a: '--- not a marker'\nb: \"x\n  --- y\"\n---\nc: 3\n",
    "%YAML 1.1\n---\na: 1\n...\n---\nb: 2\n",
    "a: 1\n...\n---\nb: 2\n",
    "---\n---\n\n---\na: 1\n",
    "",
]


@pytest.mark.parametrize("text", STREAMS)
def test_documents_parsed_apart_equal_the_stream_parsed_whole(text):
    whole = list(yaml.load_all(text, Loader=SafeLoader))
    now: dict = {}
    assert _documents(text, {}, now) == whole
    # Again with what that parse found: the same documents.
    assert _documents(text, now, {}) == whole


@pytest.mark.parametrize("text", ["a: 1\n---\nb: [2\n---\nc: 3\n", "a: 1\n---\nb: 2\n- c\n"])
def test_a_document_that_does_not_parse_fails_as_the_whole_stream_does(text):
    with pytest.raises(yaml.YAMLError) as whole:
        list(yaml.load_all(text, Loader=SafeLoader))
    with pytest.raises(yaml.YAMLError) as apart:
        _documents(text, {}, {})
    assert str(apart.value) == str(whole.value)  # the same line and column


def test_a_changed_file_parses_again_only_its_changed_documents(tmp_path):
    path = tmp_path / "consumers.yaml"

    def write(text: str) -> None:  # a new inode: the cache sees a new file at once
        (tmp_path / ".tmp").write_text(text)
        (tmp_path / ".tmp").replace(path)

    docs = [f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s{i}}}\nstringData: {{key: k{i}}}\n"
            for i in range(3)]
    cache = FileCache()
    write("---\n".join(docs))
    before = [obj for obj, _where in cache.read(path).objects]
    write("---\n".join([docs[0], docs[1].replace("k1", "rotated"), docs[2]]))
    after = [obj for obj, _where in cache.read(path).objects]
    assert after[0] is before[0]  # not parsed again
    assert after[2] is before[2]
    assert after[1] is not before[1]
    assert after[1]["stringData"] == {"key": "rotated"}
