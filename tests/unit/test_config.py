"""Settings: defaults, YAML, LIFELONG_* overrides, validation, reference table, `lifelong config show`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from lifelong.cli import main
from lifelong.service.config import Settings, load_settings, settings_reference


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults() -> None:
    s = load_settings(None)
    assert s == Settings()
    assert s.source.kind == "demo"
    assert s.source.path is None
    assert s.source.batch_size == 64
    assert s.source.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.source.kafka.client_options == {}
    assert s.learner.input_kind == "text"
    assert s.learner.feature_dim is None
    assert s.http.port == 8000
    assert s.http.max_instances == 256
    assert s.limits.max_record_bytes == 1_000_000
    assert s.labels.max_wait_s == 3600.0
    assert s.prequential_window == 1000
    assert s.publish_every_events == 256
    assert s.log_level == "INFO"


def test_yaml_sets_values(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    cfg = write_yaml(tmp_path / "c.yaml", {
        "source": {"kind": "file", "path": str(events), "batch_size": 8},
        "learner": {"input_kind": "features", "feature_dim": 4},
        "http": {"port": 9000, "max_instances": 5},
        "prequential_window": 50,
    })
    s = load_settings(cfg)
    assert s.source.kind == "file"
    assert s.source.path == events
    assert s.source.batch_size == 8
    assert s.source.poll_timeout_s == 0.5  # untouched default
    assert (s.learner.input_kind, s.learner.feature_dim) == ("features", 4)
    assert (s.http.port, s.http.max_instances) == (9000, 5)
    assert s.prequential_window == 50


def test_env_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_yaml(tmp_path / "c.yaml", {"http": {"port": 9000, "max_instances": 5}, "log_level": "INFO"})
    monkeypatch.setenv("LIFELONG_HTTP__PORT", "9001")
    monkeypatch.setenv("LIFELONG_SOURCE__KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9092,10.0.0.2:9092")
    monkeypatch.setenv("LIFELONG_LOG_LEVEL", "DEBUG")
    s = load_settings(cfg)
    assert s.http.port == 9001
    assert s.http.max_instances == 5  # the rest of the YAML section survives the override
    assert s.source.kafka.bootstrap_servers == "10.0.0.1:9092,10.0.0.2:9092"
    assert s.log_level == "DEBUG"


def test_env_without_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELONG_LEARNER__INPUT_KIND", "features")
    monkeypatch.setenv("LIFELONG_LEARNER__FEATURE_DIM", "16")
    s = load_settings()
    assert (s.learner.input_kind, s.learner.feature_dim) == ("features", 16)


def test_invalid_env_value_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELONG_HTTP__PORT", "not-a-port")
    with pytest.raises(ValidationError):
        load_settings()


@pytest.mark.parametrize("data", [
    {"htp": {"port": 1}},                       # unknown top-level key
    {"http": {"prot": 1}},                      # unknown nested key
    {"source": {"kafka": {"bootstrap": "x"}}},  # unknown deeper key
])
def test_unknown_key_in_yaml_is_an_error(tmp_path: Path, data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        load_settings(write_yaml(tmp_path / "c.yaml", data))


def test_out_of_range_value_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        load_settings(write_yaml(tmp_path / "c.yaml", {"source": {"batch_size": 0}}))


def test_file_source_without_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        load_settings(write_yaml(tmp_path / "c.yaml", {"source": {"kind": "file"}}))
    assert "source.path is required" in str(info.value)


def test_features_without_dim_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        load_settings(write_yaml(tmp_path / "c.yaml", {"learner": {"input_kind": "features"}}))
    assert "feature_dim is required" in str(info.value)
    with pytest.raises(ValidationError):
        Settings(learner={"input_kind": "features"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.yaml")


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += leaf_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_settings_reference_has_a_row_for_every_leaf() -> None:
    table = settings_reference()
    lines = table.splitlines()
    assert lines[0] == "| key | environment variable | type | default | meaning |"
    rows = [line for line in lines[2:] if line.startswith("| `")]
    assert len(rows) == len(lines) - 2
    keys = [row.split("`")[1] for row in rows]
    expected = leaf_keys(Settings)
    assert keys == expected
    assert len(keys) == len(set(keys))
    # a few spot checks of the other columns
    for key in expected:
        env = "LIFELONG_" + key.upper().replace(".", "__")
        assert f"| `{key}` | `{env}` |" in table
    assert "`source.kafka.bootstrap_servers` | `LIFELONG_SOURCE__KAFKA__BOOTSTRAP_SERVERS`" in table
    assert "| `http.port` | `LIFELONG_HTTP__PORT` | int | `8000` |" in table
    assert {"source.kind", "source.path", "source.kafka.client_options", "learner.feature_dim",
            "limits.dedup_window", "labels.max_wait_s", "prequential_window", "log_level"} <= set(keys)
    # every row has exactly five cells (a '|' inside a type would break the table)
    for row in rows:
        cells = row.replace("\\|", "").strip("|").split("|")
        assert len(cells) == 5, row


def test_config_docs_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "docs"]) == 0
    assert capsys.readouterr().out.strip() == settings_reference().strip()


def test_config_show_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_yaml(tmp_path / "c.yaml", {
        "source": {"kind": "file", "path": str(tmp_path / "e.jsonl"),
                   "kafka": {"client_options": {"security_protocol": "SSL"}}},
        "learner": {"input_kind": "features", "feature_dim": 3, "lr": 0.25},
        "http": {"max_instances": 7},
        "log_level": "WARNING",
    })
    assert main(["config", "show", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["learner"]["feature_dim"] == 3
    assert shown["http"]["max_instances"] == 7
    again = load_settings(write_yaml(tmp_path / "shown.yaml", shown))
    assert again == load_settings(cfg)
    assert again.source.kafka.client_options == {"security_protocol": "SSL"}


def test_config_show_defaults_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == 0
    shown_path = tmp_path / "shown.yaml"
    shown_path.write_text(capsys.readouterr().out)
    assert load_settings(shown_path) == Settings()


def test_config_show_reports_invalid_configuration(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "c.yaml", {"http": {"prot": 1}})
    with pytest.raises(SystemExit) as info:
        main(["config", "show", "--config", str(cfg)])
    assert "invalid configuration" in str(info.value.code)
    assert "http.prot" in str(info.value.code)
    with pytest.raises(SystemExit) as info:
        main(["config", "show", "--config", str(tmp_path / "absent.yaml")])
    assert "cannot read configuration" in str(info.value.code)


def test_learner_names_come_from_the_registry() -> None:
    from lifelong.learner.registry import LEARNERS, PRODUCT

    for name in PRODUCT:
        features = {"input_kind": "features", "feature_dim": 4} if LEARNERS[name].features_only else {}
        assert Settings(learner={"name": name, **features}).learner.name == name
    for baseline in ("er", "finetune", "river-arf"):
        with pytest.raises(ValidationError):
            Settings(learner={"name": baseline})
    with pytest.raises(ValidationError, match="input_kind 'features'"):
        Settings(learner={"name": "lifelong-mlp"})
    with pytest.raises(ValidationError, match="fast_expert"):
        Settings(learner={"name": "nmc", "fast_expert": True})
