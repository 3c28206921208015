from hypothesis import given
from hypothesis import strategies as st

from hyperhive.protocol import OVERSIZED, LineBuffer


def test_lines_split_across_chunks() -> None:
    buf = LineBuffer(max_line=100)
    assert list(buf.feed(b'{"a":')) == []
    assert list(buf.feed(b'1}\n{"b"')) == [b'{"a":1}']
    assert list(buf.feed(b":2}\n\n")) == [b'{"b":2}', b""]


def test_oversized_line_is_discarded_up_to_its_newline() -> None:
    buf = LineBuffer(max_line=10)
    out = []
    for _ in range(100):
        out += list(buf.feed(b"x" * 7))
        assert buf.buffered <= 10
    out += list(buf.feed(b"tail\nok\n"))
    assert out == [OVERSIZED, b"ok"]


def test_exact_bound_is_accepted() -> None:
    buf = LineBuffer(max_line=5)
    assert list(buf.feed(b"12345\n123456\n1\n")) == [b"12345", OVERSIZED, b"1"]


@given(
    st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=10),
    st.lists(st.integers(min_value=1, max_value=17), min_size=1, max_size=20),
)
def test_chunking_does_not_change_the_lines(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    buf = LineBuffer(max_line=20)
    out: list[object] = []
    pos, i = 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        out += list(buf.feed(data[pos : pos + step]))
        assert buf.buffered <= 20
        pos += step
        i += 1
    assert out == [line if len(line) <= 20 else OVERSIZED for line in lines]


def test_started_at_marks_the_first_byte_of_an_unfinished_line() -> None:
    buf = LineBuffer(max_line=100)
    assert buf.started_at is None
    assert list(buf.feed(b"", now=1.0)) == []
    assert buf.started_at is None  # nothing arrived: an idle connection has no deadline
    assert list(buf.feed(b'{"a"', now=2.0)) == []
    assert buf.started_at == 2.0
    assert list(buf.feed(b":1", now=5.0)) == []
    assert buf.started_at == 2.0  # still the same line: its clock keeps running
    assert list(buf.feed(b"}\n", now=6.0)) == [b'{"a":1}']
    assert buf.started_at is None
    assert list(buf.feed(b"{}\n{", now=7.0)) == [b"{}"]
    assert buf.started_at == 7.0  # a new line began in the same chunk


def test_a_discarded_line_keeps_its_start_time() -> None:
    # Trickling an oversized line is still an unfinished line with a deadline.
    buf = LineBuffer(max_line=4)
    list(buf.feed(b"123456", now=1.0))
    assert buf.buffered == 0 and buf.started_at == 1.0
    list(buf.feed(b"789", now=3.0))
    assert buf.started_at == 1.0
    assert list(buf.feed(b"\n", now=4.0)) == [OVERSIZED]
    assert buf.started_at is None


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=10))
def test_whole_lines_one_per_chunk_frame_as_one_stream(lines: list[bytes]) -> None:
    # One complete line per receive is the common case and takes a shorter path.
    one_by_one = LineBuffer(max_line=20)
    out: list[object] = []
    for line in lines:
        out += one_by_one.feed(line + b"\n", now=1.0)
        assert one_by_one.buffered == 0 and one_by_one.started_at is None
    together = LineBuffer(max_line=20).feed(b"".join(line + b"\n" for line in lines))
    assert out == together == [line if len(line) <= 20 else OVERSIZED for line in lines]
