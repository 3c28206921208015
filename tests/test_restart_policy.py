from hypothesis import given
from hypothesis import strategies as st

from hyperhive.containers import RestartPolicy


def test_backoff_doubles_and_caps() -> None:
    p = RestartPolicy()
    delays = []
    t = 0.0
    for _ in range(12):
        p = p.record_crash(t, up_since=t - 1)
        delays.append(p.next_delay())
        t += 1000  # far apart: never a crash loop, but never up for 10 min either
        p = RestartPolicy(streak=p.streak)  # keep the streak, drop loop history
    assert delays[:5] == [1, 2, 4, 8, 16]
    assert max(delays) == 300 and delays[-1] == 300


def test_ten_minutes_up_resets_the_streak() -> None:
    p = RestartPolicy().record_crash(10, 9).record_crash(20, 19).record_crash(30, 29)
    assert p.next_delay() == 4
    p = p.record_crash(30 + 601, up_since=30)
    assert p.next_delay() == 1


def test_five_crashes_in_fifteen_minutes_is_a_loop() -> None:
    p = RestartPolicy()
    for i in range(4):
        p = p.record_crash(i * 60.0, i * 60.0 - 1)
        assert not p.in_crash_loop
    p = p.record_crash(4 * 60.0, 4 * 60.0 - 1)
    assert p.in_crash_loop
    assert not p.cleared().in_crash_loop and p.cleared().next_delay() == 0


def test_spread_out_crashes_are_not_a_loop() -> None:
    p = RestartPolicy()
    for i in range(20):
        p = p.record_crash(i * 300.0, i * 300.0 - 1)  # one every 5 min: 3 per window
    assert not p.in_crash_loop


@given(st.lists(st.tuples(st.floats(0, 2000), st.floats(0, 2000)), max_size=40))
def test_invariants(events: list[tuple[float, float]]) -> None:
    p = RestartPolicy()
    t = 0.0
    for gap, up in events:
        t += gap
        before = p
        p = p.record_crash(t, t - up)
        assert 1 <= p.next_delay() <= 300
        assert p.streak <= before.streak + 1
        assert all(t - c < p.loop_window for c in p.crashes)
        # A loop needs five crashes inside one window.
        if p.in_crash_loop:
            assert len(p.crashes) >= 5 and p.crashes[-1] - p.crashes[-5] < 900
