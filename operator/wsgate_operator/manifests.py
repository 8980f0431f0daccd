"""Reading Kubernetes manifests from a directory, for standalone mode and `wsgate compile`.

Every object is remembered with the file it came from, so that a problem the
compiler finds can be reported as ``file: Kind ns/name: field: message``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .compiler import Compiled, ObjectRef, Problem, Snapshot, compile_snapshot
from .kinds import COMPILED

MANIFEST_SUFFIXES = (".yaml", ".yml")

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


def load_manifests(directory: Path) -> ManifestSet:
    result = ManifestSet()
    if not directory.is_dir():
        result.errors.append(f"{directory}: not a directory")
        return result
    for path in manifest_files(directory):
        _load_file(path, result)
    return result


def compile_directory(directory: Path) -> ManifestCompilation:
    manifests = load_manifests(directory)
    compiled = None if manifests.errors else compile_snapshot(manifests.snapshot)
    return ManifestCompilation(manifests, compiled)


def _load_file(path: Path, result: ManifestSet) -> None:
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except OSError as exc:
        result.errors.append(f"{path}: cannot be read: {exc.strerror}")
        return
    except UnicodeDecodeError:
        result.errors.append(f"{path}: is not UTF-8 text")
        return
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = getattr(exc, "problem", None) or str(exc)
        result.errors.append(f"{where}: invalid YAML: {what}")
        return

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
        _add_object(doc, where, result)


def _add_object(obj: dict, where: str, result: ManifestSet) -> None:
    kind = obj.get("kind")
    if kind not in API_VERSIONS:
        return  # other kinds (Deployments, ConfigMaps...) may share the folder
    if obj.get("apiVersion") != API_VERSIONS[kind]:
        result.errors.append(
            f"{where}: {kind} has apiVersion {obj.get('apiVersion')!r}; "
            f"expected {API_VERSIONS[kind]!r}"
        )
        return
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        result.errors.append(f"{where}: {kind} has no metadata.name")
        return
    ref = ObjectRef.of(obj)
    if ref in result.sources:
        result.errors.append(f"{where}: {ref} is also defined in {result.sources[ref]}")
        return
    result.sources[ref] = where
    result.snapshot.add(obj)
