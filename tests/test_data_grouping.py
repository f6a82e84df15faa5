"""Grouped samples (many regions of one image, one sequence) and packing (many samples, one row) compute exactly
what the same turns / samples compute one by one: sum-of-token-losses comparisons on the tiny model."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from regionvlm.data.collate import Collator
from regionvlm.data.datasets.base import group_by_image, grouped_sample
from regionvlm.data.datasets.coco import CocoInstancesDataset
from regionvlm.data.processing import ImageProcessor
from regionvlm.tokens import IGNORE_INDEX


@pytest.fixture(scope="module")
def parts(tiny_export):
    model, tokenizer, _config, _ = tiny_export
    processor = ImageProcessor(image_size=model.image_size, mean=model.image_mean, std=model.image_std)
    return model, tokenizer, processor


def token_loss_sum(model, batch) -> float:
    """Sum over every answer token of its cross-entropy (float64 for an exact-as-possible comparison)."""
    with torch.no_grad():
        logits = model(batch, all_logits=True)["logits"].double()
    labels = batch.labels.clone()
    for t in (model.image_token_id, model.region_token_id):
        labels[batch.input_ids == t] = IGNORE_INDEX
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum"))


def synth_dataset(tiny_workspace, **kw):
    synth = tiny_workspace / "data" / "synth"
    return CocoInstancesDataset(str(synth / "annotations" / "instances_train.json"), str(synth / "images"),
                                prompt={"type": "region_classification"}, **kw)


def test_group_by_image_keeps_order_and_sizes():
    items = [{"id": i, "img": img} for i, img in enumerate([1, 1, 2, 1, 2, 1, 3])]
    groups = group_by_image(items, lambda a: a["img"], 3)
    assert [[a["id"] for a in g] for g in groups] == [[0, 1, 3], [5], [2, 4], [6]]
    assert [[a["id"] for a in g] for g in group_by_image(items, lambda a: a["img"], None)] == [
        [0, 1, 3, 5], [2, 4], [6]]


def test_grouped_conversation_has_one_image_tag():
    turns = [[{"from": "human", "value": f"<image>\nWhat is <region{k}>?"}, {"from": "gpt", "value": str(k)}]
             for k in (1, 2, 3)]
    out = grouped_sample(turns, np.random.default_rng(0))
    assert sorted(t[1]["value"] for t in out["turns"]) == ["1", "2", "3"]
    assert sum(t["value"].count("<image>") for t in out["conversations"]) == 1
    assert out["conversations"][0]["value"].startswith("<image>\n")


def test_dataset_groups_all_regions_of_an_image(tiny_workspace):
    single = synth_dataset(tiny_workspace)
    grouped = synth_dataset(tiny_workspace, regions_per_sample="all")
    assert sum(len(g) for g in grouped.items) == len(single)
    assert len(grouped) < len(single)
    s = grouped[0]
    assert len(s["regions"]) == len(s["turns"]) == len(s["target"]["answers"]) > 1
    mentioned = sorted(int(t[0]["value"].split("<region")[1].split(">")[0]) for t in s["turns"])
    assert mentioned == list(range(1, len(s["regions"]) + 1))
    with pytest.raises(Exception, match="regions_per_sample"):
        synth_dataset(tiny_workspace, regions_per_sample=0)


def test_grouped_sample_loss_equals_separate_samples(parts, tiny_workspace):
    model, tokenizer, processor = parts
    grouped = synth_dataset(tiny_workspace, regions_per_sample=4)
    collator = Collator(tokenizer, model.num_image_tokens, model.tokens_per_region, template="vicuna_v1",
                        max_length=None, processor=processor)
    checked = 0
    for i in range(3):
        s = grouped[i]
        n = len(s["turns"])
        batch = collator([s])
        assert batch.turn_ids is not None and len(batch.region_mentions) == n
        separate = [{**{k: v for k, v in s.items() if k not in ("turns", "conversations")}, "conversations": t,
                     "id": f"{s['id']}-{k}"} for k, t in enumerate(s["turns"])]
        one_by_one = collator(separate)
        assert batch.input_ids.shape[1] < one_by_one.attention_mask.sum()  # the image prefix is paid once
        assert token_loss_sum(model, batch) == pytest.approx(token_loss_sum(model, one_by_one), rel=1e-6, abs=1e-9)
        checked += n > 1
    assert checked


def test_grouped_truncation_drops_whole_turns(parts, tiny_workspace):
    model, tokenizer, processor = parts
    s = synth_dataset(tiny_workspace, regions_per_sample="all")[0]
    full = Collator(tokenizer, model.num_image_tokens, model.tokens_per_region, max_length=None,
                    processor=processor)([s])
    length = full.input_ids.shape[1]
    turn_lengths = [int((full.turn_ids[0] == k).sum()) for k in range(1, int(full.turn_ids.max()) + 1)]
    limit = length - turn_lengths[-1] // 2  # the last turn no longer fits whole
    cut = Collator(tokenizer, model.num_image_tokens, model.tokens_per_region, max_length=limit,
                   processor=processor)([s])
    assert cut.input_ids.shape[1] == length - turn_lengths[-1]
    assert torch.equal(cut.input_ids[0], full.input_ids[0, : cut.input_ids.shape[1]])
    assert len(cut.region_mentions) == len(full.region_mentions) - 1
    assert cut.labels[0, -1] == tokenizer.eos_token_id  # ends on a whole answer


def test_packed_loss_equals_unpacked(parts, tiny_workspace):
    model, tokenizer, processor = parts
    ds = synth_dataset(tiny_workspace)
    samples = [ds[i] for i in range(7)]
    kw = dict(tokenizer=tokenizer, num_image_tokens=model.num_image_tokens,
              tokens_per_region=model.tokens_per_region, max_length=120, processor=processor)
    plain = Collator(**kw)(samples)
    packed = Collator(pack=True, **kw)(samples)
    assert len(packed) < len(plain) and sorted(packed.ids) == sorted(plain.ids)
    assert int(packed.attention_mask.sum()) == int(plain.attention_mask.sum())
    assert packed.segment_ids.max() >= 1 and ((packed.position_ids == 0) & packed.attention_mask.bool()).sum() == len(samples)
    assert token_loss_sum(model, packed) == pytest.approx(token_loss_sum(model, plain), rel=1e-6)
    # the training loss (mean over answer tokens) is the same too
    with torch.no_grad():
        assert float(model(packed)["loss"]) == pytest.approx(float(model(plain)["loss"]), rel=1e-5)


def test_packing_is_refused_for_generation(parts):
    model, tokenizer, _ = parts
    with pytest.raises(Exception, match="pack"):
        Collator(tokenizer, model.num_image_tokens, for_generation=True, pack=True)


def test_training_with_grouped_packed_batches_logs_padding_waste(tiny_workspace, tmp_path, monkeypatch):
    """The whole path through Lightning: grouped samples, packed rows, and the padding-waste figure in the log."""
    import csv
    from pathlib import Path

    from test_engine_resume import config_for

    from regionvlm.engine.trainer import fit

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    cfg = config_for(tiny_workspace, 3)
    cfg["data"]["train"][0]["regions_per_sample"] = "all"
    cfg["data"].update(pack=True, max_length=256)
    fit(cfg, tmp_path / "run")
    rows = [r for r in csv.DictReader((tmp_path / "run" / "logs" / "metrics.csv").open()) if r["train/padding_waste"]]
    assert len(rows) == 3
    assert all(0.0 <= float(r["train/padding_waste"]) < 1.0 and float(r["train/regions_per_s"]) > 0 for r in rows)
