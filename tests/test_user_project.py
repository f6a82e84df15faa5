"""A researcher's own project, played from outside the package as a new user would, through the real CLI in
subprocesses: local transformers folders (a CLIP vision tower, and a LLaMA whose tokenizer is only a
sentencepiece ``tokenizer.model``, as Vicuna v1.5 ships), a COCO-format set of their own asked with
``vocabulary: categories``, a region extractor from their own module (``imports:``), LoRA on the LLM;
train → export → the export copied elsewhere → ``predict`` and ``serve`` answer, asking the trained prompts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("peft")

MY_PARTS = '''
"""My project's own region extractor: mean and max of the mask's features (2·C channels)."""
import torch
from torch.nn import functional as F

from regionvlm.registry import REGION_EXTRACTORS


@REGION_EXTRACTORS.register("mean_max_pool")
class MeanMaxPool(torch.nn.Module):
    """Mean and max of the features under each mask, concatenated."""

    def __init__(self, in_channels: int, image_size: int | None = None):
        super().__init__()
        self.out_channels, self.tokens_per_region = 2 * in_channels, 1

    def forward(self, features, masks, boxes, image_index):
        weights = F.adaptive_avg_pool2d(masks[:, None].type_as(features), features.shape[-2:])[:, 0]
        feats = features[image_index]                                  # R×C×H×W (small maps: fine here)
        w = weights[:, None]
        mean = (feats * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1e-6)
        peak = feats.masked_fill(w == 0, -1e4).amax((2, 3))
        return torch.cat([mean, peak], 1)[:, None]
'''

CONFIG = '''
imports: [my_parts]
seed: 0
model:
  vision_encoder: {type: hf_clip, pretrained: "{{fileDirname}}/clip"}
  feature_refiner: {type: identity}
  global_grid: 1
  region_extractor: {type: mean_max_pool}
  share_projector: false
  projector: {type: mlp2x_gelu}
  llm:
    type: hf_causal_lm
    pretrained: "{{fileDirname}}/vicuna-like"
    lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}
  trainable: [projector, region_projector, "llm.*lora_*"]
data:
  batch_size: 4
  num_workers: 0
  template: vicuna_v1
  max_length: 128
  train:
    - {type: coco_instances, ann_file: "{{fileDirname}}/coco/instances.json", image_root: "{{fileDirname}}/coco/images",
       prompt: {type: region_classification, vocabulary: categories}}
trainer: {accelerator: cpu, devices: 1, max_steps: 3, max_epochs: -1, limit_val_batches: 0,
          enable_model_summary: false, log_every_n_steps: 1}
optim: {lr: 1.0e-3}
generation: {max_new_tokens: 4}
output: {root: "{{fileDirname}}/runs", name: mine}
'''


def my_coco(root: Path) -> list[str]:
    """A few images with squares of two categories, in COCO's instances format."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    names = ["apple", "brick"]
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(6):
        arr = np.full((64, 64, 3), 230, np.uint8)
        for k, (cat, colour) in enumerate(((1, (200, 20, 20)), (2, (120, 80, 40)))):
            x, y = int(rng.integers(2, 30)), 32 * k + 2
            arr[y:y + 24, x:x + 24] = colour
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, 24, 24],
                         "area": 576, "iscrowd": 0, "segmentation": [[x, y, x + 24, y, x + 24, y + 24, x, y + 24]]})
        Image.fromarray(arr).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 64})
    (root / "instances.json").write_text(json.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}))
    return names


def run(args: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regionvlm", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_my_own_project_trains_exports_and_answers_elsewhere(tmp_path):
    from conftest import sentencepiece_llm_folder
    from transformers import CLIPVisionConfig, CLIPVisionModel

    project = tmp_path / "my project #1"   # a folder name YAML would misread if it were pasted into the text
    project.mkdir()
    (project / "my_parts.py").write_text(MY_PARTS)
    (project / "train.yaml").write_text(CONFIG)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=64, patch_size=16)).save_pretrained(project / "clip")
    sentencepiece_llm_folder(project / "vicuna-like")
    names = my_coco(project / "coco")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REGIONVLM_OUTPUT", "REGIONVLM_DATA")}
    env["HF_HUB_OFFLINE"] = "1"

    trained = run(["train", "train.yaml"], cwd=project, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    export = project / "runs" / "mine" / "export"
    card = json.loads(json.dumps(__import__("yaml").safe_load((export / "config.yaml").read_text())))
    question = f"Answer the question using one of these category names: {', '.join(names)}."
    assert card["prompts"]["region_classification"]["vocabulary"] == names
    assert card["imports"] == ["my_parts"] and card["model"]["region_extractor"]["type"] == "mean_max_pool"
    assert "lora" not in card["model"]["llm"]  # merged on export
    assert not (export / "tokenizer.json").exists() or (export / "tokenizer_config.json").exists()

    elsewhere = tmp_path / "elsewhere" / "model"
    shutil.copytree(export, elsewhere)
    shutil.rmtree(project / "runs")  # the run is gone: the copy alone must answer
    picture = project / "coco" / "images" / "0.png"
    ask = ["predict", "--model", str(elsewhere), "--image", str(picture), "--region", "box:2,2,30,30",
           "--prompt", "What is <region1>?", "--max-new-tokens", "3"]

    refused = run(ask, cwd=tmp_path, env=env)  # the component's module is code: never imported unasked
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "my_parts" in refused.stderr and "--imports" in refused.stderr and "entry point" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    with_module = {**env, "PYTHONPATH": str(project)}   # the user's module on the path, from any folder
    answered = run([*ask, "--imports"], cwd=tmp_path, env=with_module)
    assert answered.returncode == 0, answered.stderr[-2000:]

    server = subprocess.Popen([sys.executable, "-m", "regionvlm", "serve", "--model", str(elsewhere), "--imports",
                               "--port", "0"], cwd=tmp_path, env=with_module, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                pytest.fail("serve exited before listening")
            if line.startswith("serving "):
                url = line.split(" at ", 1)[1].split("/ ", 1)[0]
        assert url, "serve did not say where it listens"
        with urllib.request.urlopen(f"{url}/ui/config", timeout=60) as r:
            tasks = json.loads(r.read())["tasks"]
        assert tasks["classify"].endswith(question)  # the page asks the trained question, names included
    finally:
        server.terminate()
        server.wait(timeout=60)
