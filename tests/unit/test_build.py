"""The in-process build's retries and timeouts, and which errors the flow retries."""

from __future__ import annotations

import time
from typing import Any

import pytest

from flows import build
from flows.config import Config, load_config
from pipelines.errors import UserError


def test_user_errors_and_interrupts_are_never_retried() -> None:
    assert build.retryable(OSError("connection reset"))
    assert build.retryable(build.StageTimeout("dedup: timed out"))
    assert not build.retryable(UserError("input path does not exist: '/missing'"))
    try:
        raise RuntimeError("ingest: 1 of 2 shards failed") from UserError("bad policy")
    except RuntimeError as exc:
        assert not build.retryable(exc)
    assert not build.retryable(KeyboardInterrupt())


def _config(**stage: Any) -> Config:
    return load_config(None, {f"stages.dedup.{key}": value for key, value in stage.items()})


def _attempts(monkeypatch: pytest.MonkeyPatch, errors: list[BaseException | None]) -> list[str]:
    """Run `_run_with_retries` on dedup with run_stage raising `errors` in turn; return the calls."""
    calls: list[str] = []

    def run_stage(run: Any, name: str, config: Any, skip_done: bool = False) -> dict[str, Any]:
        calls.append(name)
        error = errors.pop(0)
        if error is not None:
            raise error
        return {}

    monkeypatch.setattr(build, "run_stage", run_stage)
    return calls


def test_a_failed_stage_is_resumed_up_to_its_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _attempts(monkeypatch, [OSError("flaky disk"), None])
    build._run_with_retries(None, "dedup", _config(retries=1, retry_delay_seconds=0))  # type: ignore[arg-type]
    assert calls == ["dedup", "dedup"]
    calls = _attempts(monkeypatch, [OSError("flaky"), OSError("still flaky")])
    with pytest.raises(OSError, match="still flaky"):
        build._run_with_retries(None, "dedup", _config(retries=1, retry_delay_seconds=0))  # type: ignore[arg-type]
    assert calls == ["dedup", "dedup"]


def test_a_user_error_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _attempts(monkeypatch, [UserError("input path does not exist: '/gone'"), None])
    start = time.monotonic()
    with pytest.raises(UserError):
        build._run_with_retries(None, "dedup", _config(retries=3, retry_delay_seconds=30))  # type: ignore[arg-type]
    assert calls == ["dedup"] and time.monotonic() - start < 5


def test_a_stage_past_its_timeout_is_stopped() -> None:
    start = time.monotonic()
    with pytest.raises(build.StageTimeout, match=r"dedup: timed out after 0\.3 s"):  # noqa: SIM117
        with build._time_limit(0.3, "dedup"):
            time.sleep(30)
    assert time.monotonic() - start < 5


def test_the_flow_retries_only_what_a_retry_can_fix() -> None:
    from prefect.states import Failed

    from flows.build_corpus import _retry_condition

    assert _retry_condition(None, None, Failed(data=OSError("S3 throttled")))
    assert not _retry_condition(None, None, Failed(data=UserError("invalid policy x.yaml")))
