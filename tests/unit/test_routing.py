from __future__ import annotations

import pytest

from wsgate_proxy.config import Backend, PathMatch, Route
from wsgate_proxy.routing import BadPath, Router, normalize_path
from wsgate_proxy.slices import SliceClock


def route(name, *paths, hosts=(), rewrite=None):
    return Route(
        namespace="ns", name=name, hosts=hosts,
        paths=tuple(PathMatch(type=t, value=v) for t, v in paths),
        backend=Backend(service="svc", port="80", path_rewrite=rewrite),
    )


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/", "/"),
        ("/.ws", "/.ws"),
        ("/%2Ews", "/.ws"),
        ("/%61dmin", "/admin"),
        ("/a/../b", "/b"),
        ("/a/./b/", "/a/b/"),
        ("//a///b", "/a/b"),
        ("/../../x", "/x"),
        ("/a%20b", "/a b"),
    ],
)
def test_normalize_path(raw, normalized):
    assert normalize_path(raw) == normalized


@pytest.mark.parametrize("raw", ["x", "http://h/a", "/a%2Fb", "/a%5cb", "/a%00"])
def test_paths_refused(raw):
    with pytest.raises(BadPath):
        normalize_path(raw)


def test_exact_beats_prefix_and_longest_prefix_wins():
    router = Router((
        route("root", ("Prefix", "/")),
        route("ws", ("Prefix", "/ws")),
        route("deep", ("Prefix", "/ws/deep/")),
        route("exact", ("Exact", "/ws/deep/x")),
    ))
    assert router.match("h", "/ws/deep/x").route.name == "exact"
    assert router.match("h", "/ws/deep/y").route.name == "deep"
    assert router.match("h", "/ws/deep").route.name == "deep"
    assert router.match("h", "/ws").route.name == "ws"
    assert router.match("h", "/wsx").route.name == "root"
    assert router.match("h", "/").route.name == "root"


def test_prefix_matches_whole_segments():
    router = Router((route("ws", ("Prefix", "/ws")),))
    assert router.match("h", "/ws/a").route.name == "ws"
    assert router.match("h", "/wsa") is None


def test_exact_matches_only_exactly():
    router = Router((route("e", ("Exact", "/chat")),))
    assert router.match("h", "/chat").route.name == "e"
    assert router.match("h", "/chat/") is None


def test_host_precedence_exact_then_longest_wildcard_then_any():
    router = Router((
        route("any", ("Prefix", "/")),
        route("wild", ("Prefix", "/"), hosts=("*.example.com",)),
        route("wilder", ("Prefix", "/"), hosts=("*.a.example.com",)),
        route("exact", ("Prefix", "/"), hosts=("x.a.example.com",)),
    ))
    assert router.match("x.a.example.com", "/").route.name == "exact"
    assert router.match("y.a.example.com", "/").route.name == "wilder"
    assert router.match("b.example.com", "/").route.name == "wild"
    assert router.match("deep.b.example.com", "/").route.name == "wild"
    assert router.match("example.com", "/").route.name == "any"  # a wildcard needs a label
    assert router.match("other.org", "/").route.name == "any"


def test_host_header_port_case_and_trailing_dot_are_ignored():
    router = Router((route("r", ("Prefix", "/"), hosts=("ws.example.com",)),))
    for host in ("ws.example.com", "WS.Example.com:8443", "ws.example.com."):
        assert router.match(host, "/").route.name == "r"
    assert router.match("other", "/") is None


def test_a_more_specific_host_without_the_path_falls_back():
    router = Router((
        route("chat", ("Prefix", "/chat"), hosts=("a.com",)),
        route("all", ("Prefix", "/ws")),
    ))
    assert router.match("a.com", "/chat").route.name == "chat"
    assert router.match("a.com", "/ws").route.name == "all"


def test_contested_path_goes_to_the_first_route():
    router = Router((route("a", ("Exact", "/x")), route("b", ("Exact", "/x"))))
    assert router.match("h", "/x").route.name == "a"


@pytest.mark.parametrize(
    ("prefix", "rewrite", "path", "upstream"),
    [
        ("/api", "/", "/api", "/"),
        ("/api", "/", "/api/x", "/x"),
        ("/api", "/v2", "/api/x/y", "/v2/x/y"),
        ("/api/", "/v2/", "/api/x", "/v2/x"),
        ("/api", None, "/api/x", "/api/x"),
    ],
)
def test_prefix_rewrite(prefix, rewrite, path, upstream):
    router = Router((route("r", ("Prefix", prefix), rewrite=rewrite),))
    assert router.match("h", path).upstream_path == upstream


def test_exact_rewrite_replaces_the_path():
    router = Router((route("r", ("Exact", "/old"), rewrite="/new"),))
    assert router.match("h", "/old").upstream_path == "/new"


def tables(router: Router) -> dict[str, dict[str, tuple[dict, dict]]]:
    """Everything a router matches with: each host's Exact paths and Prefixes."""
    def of(table):
        return table.exact, table.prefixes
    return {"exact": {h: of(t) for h, t in router._exact_hosts.items()},
            "wildcards": {h: of(t) for h, t in router._wildcards.items()},
            "any": {"": of(router._any)}}


def test_a_router_built_in_slices_equals_one_built_at_once():
    routes = [route(f"r{i:03d}", ("Prefix", f"/p{i % 40}"), ("Exact", f"/e{i % 25}"),
                    hosts=(("a.example.com",), ("*.example.com",), ())[i % 3])
              for i in range(300)]
    whole = Router(routes)
    sliced = Router()
    # A clock always due: the router is built a route at a time, yielding after each.
    steps = sum(1 for _ in sliced.adding(routes, SliceClock(seconds=-1)))
    assert steps == len(routes)
    assert tables(sliced) == tables(whole)
    assert sliced.match("x.example.com", "/p7/x").route.name == "r007" \
        == whole.match("x.example.com", "/p7/x").route.name
