"""Reading Kubernetes manifests from a directory, for standalone mode and `wsgate compile`.

Every object is remembered with the file it came from, so that a problem the
compiler finds can be reported as ``file: Kind ns/name: field: message``.

A ``FileCache`` keeps what each file gave when it was last read: standalone mode reads
again only the files that changed (by size and modification time), and the objects of
the others stay the very same bodies, which the compiler takes as unchanged. Within a
file that changed, only the documents whose text changed are parsed again (a team's
file of a hundred consumers in which one key was rotated parses one document, not two
hundred). YAML is parsed with libyaml's C loader where it is installed.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:
    from yaml import CSafeLoader as SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader  # type: ignore[assignment]

from .compiler import Compiled, ObjectRef, Problem, Snapshot, compile_snapshot
from .kinds import COMPILED

MANIFEST_SUFFIXES = (".yaml", ".yml")
RECENT_NS = 1_000_000_000
# A document start marker: '---' at the start of a line, then a space or the line's end.
# Nothing inside a document can look like one (YAML forbids it in content).
_DOCUMENT_START = re.compile(r"^---(?=[ \t\r\n]|\Z)", re.MULTILINE)
# Directives and document end markers: a stream with them is parsed whole.
_WHOLE_STREAM = re.compile(r"^(%|\.\.\.(?=[ \t\r\n]|\Z))", re.MULTILINE)

# The kinds read from files, with the apiVersion each must have: the compiled kinds.
API_VERSIONS = {k.kind: k.api_version for k in COMPILED}


@dataclass
class ManifestSet:
    snapshot: Snapshot = field(default_factory=Snapshot)
    sources: dict[ObjectRef, str] = field(default_factory=dict)
    # Errors that make the set unusable: unreadable files, unparseable YAML, bad objects.
    errors: list[str] = field(default_factory=list)

    def describe(self, problem: Problem) -> str:
        source = self.sources.get(problem.ref)
        return f"{source}: {problem}" if source else str(problem)


@dataclass
class ManifestCompilation:
    manifests: ManifestSet
    compiled: Compiled | None

    @property
    def errors(self) -> list[str]:
        """Everything that must stop this set from being served, located in its file."""
        errors = list(self.manifests.errors)
        if self.compiled is not None:
            errors += [self.manifests.describe(p) for p in self.compiled.problems if p.invalid]
        return errors

    @property
    def warnings(self) -> list[str]:
        if self.compiled is None:
            return []
        return [self.manifests.describe(p) for p in self.compiled.problems if not p.invalid]


def manifest_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*")
        if p.is_file() and p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".")
    )


@dataclass
class _FileResult:
    objects: list[tuple[dict, str]] = field(default_factory=list)  # (object, where)
    errors: list[str] = field(default_factory=list)
    # The file's documents by their text, for its next read to reuse.
    documents: dict[str, list[Any]] = field(default_factory=dict)


class FileCache:
    """What each file gave when last read, by path, with the stat it had then."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple[tuple[int, int, int], _FileResult]] = {}
        # Each file's documents by their text as last read, also when that read is not
        # kept (a file changed within the last second is read again next time).
        self._documents: dict[Path, dict[str, list[Any]]] = {}

    def read(self, path: Path) -> _FileResult:
        try:
            info = path.stat()
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            stamp = (0, 0, 0)
        cached = self._files.get(path)
        if cached is not None and cached[0] == stamp and stamp != (0, 0, 0):
            return cached[1]
        found = _read_file(path, self._documents.get(path, {}))
        self._documents[path] = found.documents
        # A file changed within the last second may change again with the same size
        # and a modification time the file system cannot tell apart: read it again.
        if time.time_ns() - stamp[0] > RECENT_NS:
            self._files[path] = (stamp, found)
        else:
            self._files.pop(path, None)
        return found

    def keep_only(self, paths: list[Path]) -> None:
        for gone in self._files.keys() - set(paths):
            del self._files[gone]
        for gone in self._documents.keys() - set(paths):
            del self._documents[gone]


def load_manifests(directory: Path, cache: FileCache | None = None) -> ManifestSet:
    """Every object of the directory's manifests (files unchanged since the cache read
    them are not read again)."""
    result = ManifestSet()
    if not directory.is_dir():
        result.errors.append(f"{directory}: not a directory")
        return result
    cache = cache if cache is not None else FileCache()
    paths = manifest_files(directory)
    cache.keep_only(paths)
    for path in paths:
        found = cache.read(path)
        result.errors += found.errors
        for obj, where in found.objects:
            _add_object(obj, where, result)
    return result


def compile_directory(directory: Path) -> ManifestCompilation:
    manifests = load_manifests(directory)
    compiled = None if manifests.errors else compile_snapshot(manifests.snapshot)
    return ManifestCompilation(manifests, compiled)


def _read_file(path: Path, known: dict[str, list[Any]] | None = None) -> _FileResult:
    """A file's objects; documents whose text ``known`` holds (the file's last read)
    are taken from it rather than parsed again."""
    result = _FileResult()
    try:
        documents = _documents(path.read_text(encoding="utf-8"), known or {},
                               result.documents)
    except OSError as exc:
        result.errors.append(f"{path}: cannot be read: {exc.strerror}")
        return result
    except UnicodeDecodeError:
        result.errors.append(f"{path}: is not UTF-8 text")
        return result
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = getattr(exc, "problem", None) or str(exc)
        result.errors.append(f"{where}: invalid YAML: {what}")
        return result

    for index, doc in enumerate(documents):
        where = f"{path} (document {index + 1})" if len(documents) > 1 else str(path)
        if doc is None:
            continue
        if not isinstance(doc, dict):
            result.errors.append(f"{where}: expected a Kubernetes object (a mapping with kind)")
            continue
        if doc.get("kind") == "List":
            result.errors.append(f"{where}: kind List is not supported; use '---' separators")
            continue
        result.objects.append((doc, where))
    return result


def _documents(text: str, known: dict[str, list[Any]], now: dict[str, list[Any]]
               ) -> list[Any]:
    """The documents of a YAML stream, each parsed only when ``known`` lacks its text;
    ``now`` gets every document's text and parse. What a whole parse of the stream
    gives, errors included (a stream with directives or end markers, or one a document
    of which does not parse, is parsed whole). Raises yaml.YAMLError."""
    if _WHOLE_STREAM.search(text):
        return list(yaml.load_all(text, Loader=SafeLoader))
    starts = [m.start() for m in _DOCUMENT_START.finditer(text)]
    bounds = ([0] if not starts or starts[0] else []) + starts + [len(text)]
    documents = []
    try:
        for start, end in itertools.pairwise(bounds):
            chunk = text[start:end]
            parsed = known.get(chunk)
            if parsed is None:
                parsed = list(yaml.load_all(chunk, Loader=SafeLoader))
            now[chunk] = parsed
            documents += parsed
    except yaml.YAMLError:
        now.clear()
        return list(yaml.load_all(text, Loader=SafeLoader))  # the error, where it is in the file
    return documents


def file_objects(found: _FileResult) -> tuple[list[tuple[ObjectRef, dict, str]], list[str]]:
    """The compiled kinds' objects a file gives, as (ref, object, where), and what is
    wrong with the others (a wrong apiVersion, no name); other kinds are skipped."""
    objects, errors = [], []
    for obj, where in found.objects:
        kind = obj.get("kind")
        if kind not in API_VERSIONS:
            continue  # other kinds (Deployments, ConfigMaps...) may share the folder
        if obj.get("apiVersion") != API_VERSIONS[kind]:
            errors.append(f"{where}: {kind} has apiVersion {obj.get('apiVersion')!r}; "
                          f"expected {API_VERSIONS[kind]!r}")
            continue
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            errors.append(f"{where}: {kind} has no metadata.name")
            continue
        objects.append((ObjectRef.of(obj), obj, where))
    return objects, errors


def _add_object(obj: dict, where: str, result: ManifestSet) -> None:
    found, errors = file_objects(_FileResult([(obj, where)]))
    result.errors += errors
    for ref, checked, _where in found:
        if ref in result.sources:
            result.errors.append(f"{where}: {ref} is also defined in {result.sources[ref]}")
            continue
        result.sources[ref] = where
        result.snapshot.add(checked)
