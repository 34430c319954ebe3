"""Roles in process: settings, read-your-writes, and a learner's versions rising above the topic's."""
from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from lifelong.service.config import Settings

from http_harness import CENTERS, Harness, labelled_events


@pytest.mark.parametrize("role", ["learner", "predictor"])
def test_roles_other_than_all_need_kafka(role: str) -> None:
    with pytest.raises(ValidationError, match="needs source.kind 'kafka'"):
        Settings(role=role)
    assert Settings(role=role, source={"kind": "kafka"}).role == role
    # A local folder as the snapshot channel needs no broker.
    assert Settings(role=role, snapshots={"dir": "/tmp/snaps"}).role == role
    with pytest.raises(ValidationError, match="snapshots.publish needs"):
        Settings(snapshots={"publish": True})
    assert Settings(snapshots={"publish": True, "dir": "/tmp/snaps"}).publishes
    assert Settings(role="learner", source={"kind": "kafka"}).publishes
    assert not Settings(source={"kind": "kafka"}).publishes


def test_snapshot_settings_are_bounded() -> None:
    with pytest.raises(ValidationError):
        Settings(snapshots={"chunk_bytes": 2 << 20})  # past the 1 MiB record limits chunks exist to respect
    with pytest.raises(ValidationError):
        Settings(snapshots={"model_key": "a/b"})  # '/' separates a key from its chunk suffixes


def predict(h: Harness, min_version: Any) -> Any:
    return h.client.post("/v1/predict", json={"instances": [{"features": CENTERS["a"]}]},
                         headers={"X-Lifelong-Min-Version": str(min_version)})


def test_min_version_header_answers_409_ahead_of_the_model_and_400_when_not_a_number(trained: Harness) -> None:
    version = trained.service.holder.current.version
    assert predict(trained, version).status_code == 200
    assert predict(trained, version - 1).json()["model_version"] == version
    ahead = predict(trained, version + 1)
    assert ahead.status_code == 409 and "not published yet" in ahead.json()["detail"]
    assert predict(trained, "v3").status_code == 400


class FakePublisher:
    """What the loop needs of a publisher: the newest version on the topic, and a place for offers."""

    def __init__(self, newest: int) -> None:
        self.newest, self.offered, self.fenced = newest, [], None  # type: ignore[var-annotated]

    def connect(self) -> int:
        return self.newest

    def offer(self, snapshot: Any) -> None:
        self.offered.append(snapshot.version)

    def close(self) -> None:
        pass


def test_a_learner_behind_the_topic_publishes_versions_above_it(make_service: Any) -> None:
    h = make_service(labelled_events(30, seed=0))
    h.service.loop.step()
    own = h.service.learner.version
    publisher = FakePublisher(newest=own + 40)  # a snapshot published before a crash, after the checkpoint
    h.service.loop.publisher = publisher
    h.service.loop._connect_publisher(publisher)  # type: ignore[arg-type]
    assert publisher.offered == [own + 41]
    assert h.service.holder.current.version == own + 41  # local answers agree with the predictors'
    assert h.service.loop.version_offset == 41


def test_a_learner_ahead_of_the_topic_keeps_its_versions(make_service: Any) -> None:
    h = make_service(labelled_events(30, seed=0))
    h.service.loop.step()
    publisher = FakePublisher(newest=-1)
    h.service.loop.publisher = publisher
    h.service.loop._connect_publisher(publisher)  # type: ignore[arg-type]
    assert publisher.offered == [h.service.learner.version] and h.service.loop.version_offset == 0
