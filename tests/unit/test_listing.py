"""The listing of what a proxy runs (listing.py): what the operator reads back is what
the proxy rendered, and anything else is refused naming its line."""

from __future__ import annotations

import random

import pytest

from wsgate_proxy import listing


def test_a_listing_reads_back_as_rendered_and_stays_compact():
    rng = random.Random(7)
    digests = {("consumer", f"default/user-{n}"): rng.getrandbits(256) for n in range(5000)}
    digests[("endpoints", "default/echo:8080")] = 0
    body = b"".join(listing.render("0123456789abcdef", digests.items()))
    found = listing.parse(body)
    assert found.version == "0123456789abcdef"
    assert found.digests == {item: listing.short(d) for item, d in digests.items()}
    assert len(body) / len(digests) < 50


def test_a_large_listing_is_rendered_a_slice_at_a_time():
    # 50,000 items take 20-30 ms to render: the proxy's loop runs between the chunks.
    digests = ((("consumer", f"default/user-{n}"), n << 200) for n in range(50_000))
    chunks = list(listing.render("0123456789abcdef", digests))
    assert len(chunks) > 2
    assert len(listing.parse(b"".join(chunks)).digests) == 50_000


@pytest.mark.parametrize(("body", "error"), [
    (b"", "line 1"), (b"[]\n", "line 1"), (b'{"version": 1}\n', "line 1"),
    (b'{"version": "v"}\nconsumer default/a\n', "line 2"),
    (b'{"version": "v"}\nconsumer default/a 12345\n', "line 2"),
    (b'{"version": "v"}\nconsumer default/a 0123456789abcdeg\n', "line 2"),
    (b'{"version": "v"}\nconsumer default/\xff 0123456789abcdef\n', "line 2"),
    (b'{"version": "v"}\nroute a 0123456789abcdef\nx y z w\n', "line 3")])
def test_anything_else_is_refused_naming_the_line(body, error):
    with pytest.raises(ValueError, match=error):
        listing.parse(body)
