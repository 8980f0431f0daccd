"""frames.py against frames serialized by the `websockets` library."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode

from wsgate_proxy.frames import (
    CloseCode,
    FrameInspector,
    ProtocolError,
    close_code_label,
    close_frame,
    read_frame,
)

OP_BINARY, OP_CLOSE, OP_CONT = Opcode.BINARY, Opcode.CLOSE, Opcode.CONT
OP_PING, OP_TEXT = Opcode.PING, Opcode.TEXT


def frames(*items: Frame, mask: bool) -> bytes:
    return b"".join(f.serialize(mask=mask, extensions=[]) for f in items)


STREAM = [
    Frame(OP_TEXT, b"hello"),
    Frame(OP_BINARY, b"x" * 200),  # 16-bit length
    Frame(OP_PING, b"p"),
    Frame(OP_TEXT, b"frag-1", fin=False),
    Frame(OP_PING, b""),  # control frames may sit between fragments
    Frame(OP_CONT, b"frag-2", fin=False),
    Frame(OP_CONT, b"frag-3"),
    Frame(OP_BINARY, b"y" * 70000),  # 64-bit length
    Frame(OP_CLOSE, Close(4321, "bye").serialize()),
]


@pytest.mark.parametrize("mask", [True, False])
def test_whole_stream_passes_unchanged_and_is_counted(mask):
    data = frames(*STREAM, mask=mask)
    inspector = FrameInspector(masked=mask)
    assert inspector.feed(data) == data
    assert inspector.messages == 4
    assert inspector.close_code == 4321
    assert inspector.at_boundary


@pytest.mark.parametrize("mask", [True, False])
def test_every_split_point_forwards_the_same_bytes(mask):
    data = frames(*STREAM[:7], STREAM[8], mask=mask)
    for split in range(len(data) + 1):
        inspector = FrameInspector(masked=mask)
        out = inspector.feed(data[:split]) + inspector.feed(data[split:])
        assert out == data, split
        assert inspector.messages == 3
        assert inspector.close_code == 4321


def test_byte_at_a_time():
    data = frames(*STREAM, mask=True)
    inspector = FrameInspector(masked=True)
    out = b"".join(inspector.feed(data[i : i + 1]) for i in range(len(data)))
    assert out == data
    assert (inspector.messages, inspector.close_code) == (4, 4321)


def test_a_split_header_is_held_until_whole():
    data = frames(Frame(OP_TEXT, b"a" * 300), mask=True)
    inspector = FrameInspector(masked=True)
    assert inspector.feed(data[:3]) == b""  # 2 + 2 length bytes + 4 mask bytes needed
    assert inspector.at_boundary
    assert inspector.feed(data[3:]) == data


def test_close_frame_without_code():
    inspector = FrameInspector(masked=False)
    inspector.feed(frames(Frame(OP_CLOSE, b""), mask=False))
    assert inspector.close_code == 1005


def test_message_size_limit_counts_all_fragments_and_stops_before_the_frame():
    first = frames(Frame(OP_TEXT, b"a" * 60, fin=False), mask=True)
    second = frames(Frame(OP_CONT, b"b" * 60), mask=True)
    inspector = FrameInspector(masked=True, max_message_bytes=100)
    assert inspector.feed(first) == first
    assert inspector.violation is None
    assert inspector.feed(second) == b""
    assert inspector.violation == (1009, "message too big")
    assert inspector.halted


def test_a_message_within_the_limit_resets_the_count():
    inspector = FrameInspector(masked=True, max_message_bytes=100)
    data = frames(*[Frame(OP_BINARY, b"z" * 90)] * 5, mask=True)
    assert inspector.feed(data) == data
    assert inspector.violation is None


def test_messages_beyond_the_rate_are_not_forwarded():
    inspector = FrameInspector(masked=True, rate=3)
    burst = [frames(Frame(OP_TEXT, f"m{i}".encode()), mask=True) for i in range(5)]
    # A burst of one second's worth passes; the fourth message is cut before its first byte.
    assert inspector.feed(b"".join(burst)) == b"".join(burst[:3])
    assert inspector.violation == (1008, "message rate exceeded")


def test_continuation_frames_and_control_frames_do_not_count_against_the_rate():
    inspector = FrameInspector(masked=True, rate=1)
    data = frames(Frame(OP_TEXT, b"a", fin=False), Frame(OP_PING, b""), Frame(OP_CONT, b"b"),
                  mask=True)
    assert inspector.feed(data) == data
    assert inspector.violation is None


def test_halt_stops_forwarding_at_the_next_boundary_but_keeps_watching():
    one = frames(Frame(OP_BINARY, b"1" * 1000), mask=False)
    two = frames(Frame(OP_TEXT, b"after"), Frame(OP_CLOSE, Close(1000, "").serialize()),
                 mask=False)
    inspector = FrameInspector(masked=False)
    assert inspector.feed(one[:500]) == one[:500]
    inspector.halt_requested = True
    # The rest of the frame in progress still goes, nothing after it.
    assert inspector.feed(one[500:] + two) == one[500:]
    assert inspector.halted
    assert inspector.close_code == 1000
    assert inspector.feed(frames(Frame(OP_TEXT, b"more"), mask=False)) == b""


@pytest.mark.parametrize("masked", [True, False])
def test_close_frames_the_proxy_writes_parse_as_close_frames(masked):
    from websockets.streams import StreamReader

    reader = StreamReader()
    reader.feed_data(close_frame(1008, "credential revoked", masked=masked))
    parser = Frame.parse(reader.read_exact, mask=masked)
    try:
        next(parser)
    except StopIteration as stop:
        frame = stop.value
    assert frame.opcode == OP_CLOSE
    assert Close.parse(frame.data) == Close(1008, "credential revoked")


@pytest.mark.parametrize("masked", [True, False])
def test_control_frame_declaring_more_than_125_bytes_is_a_protocol_error(masked):
    before = frames(Frame(OP_TEXT, b"fine"), mask=masked)
    huge_close = bytes((0x88, (0x80 if masked else 0) | 127)) + (1 << 62).to_bytes(8, "big")
    huge_close += b"\0\0\0\0" if masked else b""
    inspector = FrameInspector(masked=masked)
    # Forwarding stops before the offending header; nothing of it is held.
    assert inspector.feed(before + huge_close + b"x" * 1000) == before
    assert inspector.violation == (1002, "control frame longer than 125 bytes or fragmented")
    assert inspector.broken
    assert inspector.halted
    assert inspector.feed(b"y" * 100_000) == b""  # the stream is not read any more


def test_fragmented_control_frame_is_a_protocol_error():
    ping = bytes((0x09, 0x81)) + b"\0\0\0\0" + b"p"  # FIN=0 (websockets refuses to make it)
    inspector = FrameInspector(masked=True)
    assert inspector.feed(ping) == b""
    assert inspector.violation == (1002, "control frame longer than 125 bytes or fragmented")


def test_a_control_frame_of_125_bytes_passes():
    data = frames(Frame(OP_PING, b"p" * 125), Frame(OP_CLOSE, Close(1000, "r" * 123)
                                                        .serialize()), mask=True)
    inspector = FrameInspector(masked=True)
    assert inspector.feed(data) == data
    assert inspector.violation is None


def test_close_reason_is_cut_at_a_character_boundary():
    from websockets.streams import StreamReader

    reason = "é" * 100  # 200 bytes of UTF-8: cut at 123 would split a character
    reader = StreamReader()
    reader.feed_data(close_frame(1008, reason, masked=False))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as stop:
        frame = stop.value
    close = Close.parse(frame.data)  # websockets checks the UTF-8
    assert close.reason == "é" * 61


def test_read_frame_unmasks_and_refuses_oversized_frames_from_the_header():
    data = frames(Frame(OP_TEXT, b'{"type": "auth"}'), mask=True)
    assert read_frame(data[:5], 100) is None  # incomplete
    frame, size = read_frame(data + b"more", 100)
    assert (frame.opcode, frame.fin, frame.masked, frame.payload, size) == (
        OP_TEXT, True, True, b'{"type": "auth"}', len(data))
    header_only = frames(Frame(OP_TEXT, b"x" * 70_000), mask=True)[:14]
    with pytest.raises(ProtocolError):
        read_frame(header_only, 16 * 1024)


def test_close_code_labels_come_from_a_fixed_set():
    labels = {close_code_label(code) for code in range(0, 70_000)}
    assert labels == {*(str(int(c)) for c in CloseCode if c < 3000), "3xxx", "4xxx", "invalid"}
    assert close_code_label(None) == "none"


def test_small_text_frames_are_held_whole_and_listed_for_a_look():
    """FirstMessage sessions: a text frame of at most ``capture`` bytes is never split
    across what feed returns, and feed says where each lies."""
    data = frames(Frame(OP_BINARY, b"b" * 10), Frame(OP_TEXT, b'{"type": "auth"}'),
                  Frame(OP_TEXT, b"t" * 300), Frame(OP_TEXT, b"frag", fin=False),
                  Frame(OP_CONT, b"ment"), mask=True)
    inspector = FrameInspector(masked=True, capture=64)
    out, spans = b"", []
    for i in range(0, len(data), 7):  # in 7-byte chunks
        chunk = inspector.feed(data[i:i + 7])
        spans += [(len(out) + start, len(out) + end) for start, end in inspector.captured]
        out += chunk
    assert out == data
    assert inspector.messages == 4
    (start, end), = spans  # the small unfragmented text frame only
    frame, size = read_frame(out[start:end], 64)
    assert (frame.payload, size) == (b'{"type": "auth"}', end - start)


def test_a_pause_stops_at_the_next_boundary_and_the_rest_follows():
    data = frames(Frame(OP_BINARY, b"a" * 100), Frame(OP_BINARY, b"b" * 100), mask=False)
    inspector = FrameInspector(masked=False)
    first = inspector.feed(data[:50])  # mid-frame: no boundary yet
    inspector.pause_requested = True
    second = inspector.feed(data[50:])
    assert inspector.paused
    assert first + second == data[:102]  # up to the end of the first frame
    inspector.paused = False
    assert inspector.feed(b"") == data[102:]  # the proxy's own frame went in between


def raw_frame(opcode: int, fin: bool, size: int, width: int, masked: bool) -> bytes:
    """A frame built by hand, so that its length may take a wider field than it needs
    (``width``: 0 for 7 bits, 2 or 8 bytes), which the inspector accepts too."""
    head = bytes((0x80 * fin | opcode,))
    bit = 0x80 if masked else 0
    if width == 0:
        head += bytes((bit | size,))
    else:
        head += bytes((bit | (126 if width == 2 else 127),)) + size.to_bytes(width, "big")
    payload = (1000).to_bytes(2, "big") + b"c" * (size - 2) if opcode == 8 and size >= 2 \
        else b"p" * size
    return head + (b"MASK" if masked else b"") + payload


@st.composite
def streams(draw):
    """A stream of frames of every kind (data, control, reserved, oversized control),
    lengths in every width, cut into chunks anywhere."""
    masked = draw(st.booleans())
    data = b""
    boundaries = []
    for _ in range(draw(st.integers(1, 8))):
        opcode = draw(st.sampled_from([0, 0, 1, 2, 2, 3, 8, 9, 10, 11]))
        # Small payloads (the reference below takes one byte at a time); the wider
        # length fields come from the choice of width.
        size = draw(st.integers(0, 140))
        width = draw(st.sampled_from([2, 8] if size > 125 else [0, 0, 2, 8]))
        data += raw_frame(opcode, draw(st.booleans()), size, width, masked)
        boundaries.append(len(data))
    # Cuts at most frame boundaries (a chunk of exactly one frame: the fast path's case)
    # and a few anywhere.
    cuts = [b for b in boundaries if draw(st.integers(0, 3))]
    cuts = sorted(cuts + draw(st.lists(st.integers(0, len(data)), max_size=4)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return masked, chunks


def state(inspector: FrameInspector) -> tuple:
    return (inspector.messages, inspector.message_bytes, inspector.close_code,
            inspector.violation, inspector.halted, inspector.broken, inspector.at_boundary)


@settings(max_examples=300, deadline=None)
@given(streams(), st.sampled_from([0, 1, 60, 200]), st.integers(-1, 12))
def test_chunks_as_they_come_and_byte_at_a_time_agree(stream, limit, halt_at):
    """Whole chunks (where the one-frame fast path applies) forward and count exactly
    what the same bytes one at a time do (which never takes it), after every chunk."""
    masked, chunks = stream
    fast = FrameInspector(masked=masked, max_message_bytes=limit)
    slow = FrameInspector(masked=masked, max_message_bytes=limit)
    fast_out = slow_out = b""
    for i, chunk in enumerate(chunks):
        if i == halt_at:
            fast.halt_requested = slow.halt_requested = True
        fast_out += fast.feed(chunk)
        pieces = [chunk[j : j + 1] for j in range(len(chunk))] or [b""]
        slow_out += b"".join(slow.feed(piece) for piece in pieces)
        assert fast_out == slow_out, i
        assert state(fast) == state(slow), i


@pytest.mark.parametrize("masked", [True, False])
def test_a_chunk_of_a_frame_with_a_64_bit_length_is_not_a_whole_frame(masked):
    """129 bytes (133 masked) starting with a 64-bit length are a header and the start
    of a payload, even though 127, the length field's marker, would fit them exactly."""
    data = raw_frame(2, True, 70_000, 8, masked)
    chunk = data[: 2 + (4 if masked else 0) + 127]
    inspector = FrameInspector(masked=masked)
    assert inspector.feed(chunk) == chunk
    assert not inspector.at_boundary
    assert inspector.messages == 1
    assert inspector.feed(data[len(chunk):]) == data[len(chunk):]
    assert inspector.at_boundary
