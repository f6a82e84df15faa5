"""Experiment tracking by config: the top-level ``loggers:`` list → Lightning's own loggers.

```yaml
loggers: [csv]                                   # the default: offline, <run_dir>/logs/metrics.csv
loggers: [csv, tensorboard, {type: wandb, project: rgpt, entity: my-team}, {type: mlflow, experiment_name: rgpt}]
```

Every logger gets the resolved config (Lightning logs the module's hyperparameters), the training metrics
(loss, lr, samples/regions/tokens per second, padding waste) and the generated validation samples
(`log_samples`). An entry's other keys go to the Lightning logger's constructor. A logger whose package is not
installed is a `ConfigError` naming the package, before anything runs.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any

from regionvlm.errors import ConfigError
from regionvlm.registry import construct, to_plain

#: name → (Lightning logger class path, the packages it needs: any one of them)
LOGGERS = {
    "csv": ("lightning.pytorch.loggers.CSVLogger", ()),
    "tensorboard": ("lightning.pytorch.loggers.TensorBoardLogger", ("tensorboard", "tensorboardX")),
    "wandb": ("lightning.pytorch.loggers.WandbLogger", ("wandb",)),
    "mlflow": ("lightning.pytorch.loggers.MLFlowLogger", ("mlflow",)),
}


def _defaults(name: str, run_dir: Path) -> dict[str, Any]:
    """Where each logger writes by default: inside the run directory (nothing leaves the machine unless the
    logger itself is an online service the user configured)."""
    return {"csv": {"save_dir": str(run_dir), "name": "", "version": "logs"},
            "tensorboard": {"save_dir": str(run_dir), "name": "", "version": "tensorboard"},
            "wandb": {"save_dir": str(run_dir)},
            "mlflow": {"tracking_uri": (run_dir / "mlruns").resolve().as_uri()}}[name]


def build_loggers(nodes: Any, run_dir: Path) -> list:
    """Lightning loggers for the ``loggers:`` entries (names or ``{type: name, ...}`` nodes)."""
    import importlib

    nodes = to_plain(nodes)
    if nodes is None:
        nodes = ["csv"]
    if not isinstance(nodes, list):
        raise ConfigError(f"loggers: expected a list such as [csv, tensorboard], got {nodes!r}")
    out = []
    for i, node in enumerate(nodes):
        node = {"type": node} if isinstance(node, str) else dict(node) if isinstance(node, dict) else None
        if node is None or not isinstance(node.get("type"), str):
            raise ConfigError(f"loggers[{i}]: expected a name or a mapping with 'type'")
        name = node.pop("type")
        if name not in LOGGERS:
            raise ConfigError(f"loggers[{i}]: unknown logger {name!r}; known: {', '.join(LOGGERS)}")
        path, packages = LOGGERS[name]
        if packages and not any(find_spec(p) is not None for p in packages):
            raise ConfigError(f"loggers[{i}]: the {name} logger needs the '{packages[0]}' package, which is not "
                              f"installed (pip install {packages[0]}), or remove it from loggers")
        module, cls = path.rsplit(".", 1)
        kwargs = {**_defaults(name, run_dir), **node}
        out.append(construct(getattr(importlib.import_module(module), cls), kwargs, key_path=f"loggers[{i}]",
                             what=f"{name} logger"))
    return out


def log_samples(loggers: list, rows: list[dict], step: int) -> None:
    """Generated validation samples to every logger that can hold text (CSV keeps them in samples.jsonl)."""
    text = "\n\n".join(f"**{r['id']}**: {r['prediction']} (reference: {r['reference']})" for r in rows)
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger":
            logger.log_text(key="samples", columns=["step", "id", "prediction", "reference"],
                            data=[[step, r["id"], r["prediction"], str(r["reference"])] for r in rows])
        elif kind == "TensorBoardLogger":
            logger.experiment.add_text("samples", text, global_step=step)
        elif kind == "MLFlowLogger":
            logger.experiment.log_text(logger.run_id, text, f"samples/step_{step:07d}.md")
