"""One ObservationHistory behind the local Session, the server's sessions and the control broker: the
same padding at episode start, the same reset, the same refusal of NaN / inf — checked through each."""

from __future__ import annotations

import numpy as np
import pytest

from fastpolicy.control.broker import ActionBroker, Chunk
from fastpolicy.policies.base import ChunkResult, Policy
from fastpolicy.policies.history import NonFiniteActionError, ObservationHistory
from fastpolicy.serve.server import ServerSession

TO = 3


class WindowPolicy(Policy):
    """Returns the window it was given (flattened) as its one action, or NaN when told to."""

    method = "window"

    def __init__(self, nan: bool = False) -> None:
        self.obs_dim, self.action_dim, self.obs_horizon, self.action_horizon = 1, TO, TO, 1
        self.nan = nan
        self.windows: list[np.ndarray] = []

    def predict_chunk(self, obs_window, state=None, generator=None) -> ChunkResult:
        window = np.asarray(obs_window, np.float32)
        self.windows.append(window)
        actions = window.reshape(len(window), 1, TO)
        return ChunkResult(np.full_like(actions, np.nan) if self.nan else actions, 1, None)


class FakeSource:
    """A chunk source that records the windows it is asked to plan from."""

    obs_horizon, action_dim, period_s = TO, TO, 0.1

    def __init__(self, nan: bool = False) -> None:
        self.nan = nan
        self.windows: list[np.ndarray] = []

    def request(self, obs_window: np.ndarray, t: float) -> Chunk:
        self.windows.append(np.asarray(obs_window))
        actions = np.full((2, TO), np.nan if self.nan else 1.0, np.float32)
        return Chunk(actions, t + self.period_s * np.arange(2), 1, t)

    def reset(self) -> None:
        pass


def _obs(x: float) -> np.ndarray:
    return np.array([x], np.float32)


# --- the three users see the same windows ------------------------------------------------------------


def _session_windows(frames):
    policy = WindowPolicy()
    session = policy.new_session()
    for f in frames:
        session.act(_obs(f))
    return [w[0, :, 0].tolist() for w in policy.windows]


def _server_windows(frames):
    session = ServerSession(WindowPolicy())
    out = []
    for f in frames:
        session.observe(_obs(f)[None])
        out.append(session.window()[:, 0].tolist())
    return out


def _broker_windows(frames):
    broker = ActionBroker(FakeSource())
    out = []
    for f in frames:
        broker.observe(_obs(f))
        out.append(broker.window()[:, 0].tolist())
    broker.close()
    return out


@pytest.mark.parametrize("windows_of", [_session_windows, _server_windows, _broker_windows])
def test_padding_at_episode_start_and_rolling_window(windows_of):
    assert windows_of([1, 2, 3, 4]) == [[1, 1, 1], [1, 1, 2], [1, 2, 3], [2, 3, 4]]


def test_reset_starts_a_new_episode_everywhere():
    policy = WindowPolicy()
    session = policy.new_session()
    session.act(_obs(1))
    session.reset()
    session.act(_obs(7))
    assert policy.windows[-1][0, :, 0].tolist() == [7, 7, 7]

    server = ServerSession(WindowPolicy())
    server.observe(np.array([[1.0], [2.0]], np.float32))
    server.reset()
    server.observe(_obs(7)[None])
    assert server.window()[:, 0].tolist() == [7, 7, 7]

    broker = ActionBroker(FakeSource())
    broker.observe(_obs(1))
    broker.reset()
    assert broker.act(0.0) is None and broker.requests == 0  # no history: nothing to plan from
    broker.observe(_obs(7))
    assert broker.window()[:, 0].tolist() == [7, 7, 7]
    broker.close()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_observations_are_refused_everywhere(bad):
    session = WindowPolicy().new_session()
    with pytest.raises(ValueError, match="NaN or inf"):
        session.act(_obs(bad))
    with pytest.raises(ValueError, match="NaN or inf"):
        session.observe_only(_obs(bad))
    server = ServerSession(WindowPolicy())
    server.observe(_obs(1)[None])
    with pytest.raises(ValueError, match="NaN or inf"):
        server.observe(_obs(bad)[None])
    assert server.window()[:, 0].tolist() == [1, 1, 1]  # nothing of the bad frame was kept
    broker = ActionBroker(FakeSource())
    with pytest.raises(ValueError, match="NaN or inf"):
        broker.observe(_obs(bad))
    broker.close()


def test_non_finite_actions_are_refused_locally_and_by_the_broker():
    with pytest.raises(NonFiniteActionError, match="window produced non-finite actions"):
        WindowPolicy(nan=True).new_session().act(_obs(1))

    broker = ActionBroker(FakeSource(nan=True))
    broker.observe(_obs(1))
    with pytest.raises(NonFiniteActionError):
        broker.prime()
    assert len(broker.queue) == 0
    broker.act(0.0)  # asynchronous request: counted as an error, nothing queued
    broker.wait_idle()
    assert broker.errors == 1 and isinstance(broker.last_error, NonFiniteActionError)
    assert len(broker.queue) == 0 and broker.act(0.0) is None
    broker.close()


def test_snapshot_and_restore_undo_an_observation():
    history = ObservationHistory(TO)
    history.append(_obs(1))
    before = history.snapshot()
    history.extend(np.array([[2.0], [3.0]], np.float32))
    history.restore(before)
    assert history.window()[0, :, 0].tolist() == [1, 1, 1] and len(history) == 1
    with pytest.raises(ValueError, match="no observation yet"):
        ObservationHistory(TO).window()


def test_batched_history_keeps_robots_apart():
    history = ObservationHistory(2, batch_size=2)
    history.append(np.array([[1.0], [10.0]], np.float32))
    history.append(np.array([[2.0], [20.0]], np.float32))
    assert history.window()[..., 0].tolist() == [[1, 2], [10, 20]]
