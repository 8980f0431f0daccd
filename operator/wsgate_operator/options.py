"""The operator's settings, from its command line: built once and passed to what reads
them (the watches' filters, the memo), never a module global."""

from __future__ import annotations

from dataclasses import dataclass, field


def parse_selector(text: str) -> dict[str, str]:
    """An equality label selector ('a=b,c=d') as a dict."""
    selector = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.replace("==", "=").partition("=")
        if not sep or not key or "!" in key:
            raise ValueError(f"{part!r}: only equality selectors (key=value) are supported")
        selector[key.strip()] = value.strip()
    if not selector:
        raise ValueError("the proxy selector is empty: it would match every pod")
    return selector


@dataclass
class OperatorOptions:
    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    proxy_selector: dict[str, str] = field(default_factory=lambda: {
        "app.kubernetes.io/name": "wsgate-proxy"})
    proxy_namespace: str = "default"
    proxy_admin_port: int = 9901
    admin_token: str = ""
    holdoff: float = 0.05
    max_holdoff: float = 0.5
    verify_every: float = 30.0
    # How long the API server keeps each watch open (timeoutSeconds); the operator then
    # watches again from the last version it saw.
    watch_seconds: int = 300

    def watches(self, namespace: str | None) -> bool:
        return not self.namespaces or namespace in self.namespaces

