"""Experiment tracking by config: ``loggers:`` → Lightning loggers; a missing package is one clear error."""

import pytest

from regionvlm.engine.loggers import build_loggers, log_samples
from regionvlm.errors import ConfigError


def test_default_is_csv_in_the_run_dir(tmp_path):
    (logger,) = build_loggers(None, tmp_path)
    assert type(logger).__name__ == "CSVLogger"
    assert logger.log_dir == str(tmp_path / "logs")
    logger.log_metrics({"train/loss": 1.5}, step=0)
    logger.save()
    assert "train/loss" in (tmp_path / "logs" / "metrics.csv").read_text()
    log_samples([logger], [{"id": "a", "prediction": "x", "reference": "y"}], 0)  # CSV: nothing, no error


def test_csv_options_reach_the_logger(tmp_path):
    (logger,) = build_loggers([{"type": "csv", "flush_logs_every_n_steps": 7}], tmp_path)
    assert logger._flush_logs_every_n_steps == 7


@pytest.mark.parametrize("name,package", [("wandb", "wandb"), ("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_missing_package_is_named(tmp_path, name, package):
    from importlib.util import find_spec

    if find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(ConfigError, match=rf"loggers\[1\]: the {name} logger needs the '{package}' package"):
        build_loggers(["csv", name], tmp_path)


@pytest.mark.parametrize("nodes,message", [
    (["csvv"], r"loggers\[0\]: unknown logger 'csvv'; known: csv, tensorboard, wandb, mlflow"),
    ("csv", "loggers: expected a list"),
    ([{"name": "x"}], r"loggers\[0\]: expected a name or a mapping with 'type'"),
    ([{"type": "csv", "sve_dir": "x"}], r"loggers\[0\]"),
])
def test_bad_entries(tmp_path, nodes, message):
    with pytest.raises(ConfigError, match=message):
        build_loggers(nodes, tmp_path)


def test_config_accepts_loggers_and_cli_overrides_them():
    from regionvlm.config import load_config

    cfg = load_config("projects/rgpt/tiny/stage1.yaml", ["loggers=[csv,wandb]"])
    assert list(cfg.loggers) == ["csv", "wandb"]
    assert list(load_config("projects/rgpt/tiny/stage1.yaml").loggers) == ["csv"]
