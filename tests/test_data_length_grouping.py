"""Length-grouped batching (``data.group_by_length``): the mixture sampler's epoch rearranged into batches of
similar estimated length, with its determinism, coverage, exact resume and sharding kept; and the length
estimate against the collator's real lengths."""

import numpy as np
import pytest

from regionvlm.data.datamodule import MixtureSampler

SIZES, RATIOS = [70, 130], [2.0, 1.0]


def lengths_for(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(10, 500, n)


def sampler(**kw) -> MixtureSampler:
    kw = {"seed": 3, "batch_size": 4, "sample_lengths": lengths_for(sum(SIZES)), "megabatch": 5, **kw}
    return MixtureSampler(SIZES, RATIOS, **kw)


def batches(order, size):
    return [order[i:i + size] for i in range(0, len(order), size)]


def spread(order, lengths, size) -> float:
    """Mean over full batches of (longest - shortest) length in the batch."""
    return float(np.mean([np.ptp(lengths[b]) for b in batches(np.asarray(order), size) if len(b) == size]))


def test_grouped_order_is_a_function_of_seed_and_epoch():
    a, b = sampler(), sampler()
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    other_seed = sampler(seed=4)
    other_seed.set_epoch(1)
    b.set_epoch(2)
    assert list(other_seed) != list(a) and list(b) != list(a)


def test_grouped_epoch_is_a_permutation_of_the_plain_epoch():
    """The same samples as without grouping (so the mixture's shares hold); with one dataset and no ratio every
    sample exactly once."""
    for epoch in (0, 1):
        plain, grouped = sampler(sample_lengths=None), sampler()
        plain.set_epoch(epoch)
        grouped.set_epoch(epoch)
        assert sorted(grouped) == sorted(plain) and list(grouped) != list(plain)
    one = MixtureSampler([203], [1.0], seed=1, batch_size=8, sample_lengths=lengths_for(203), megabatch=4)
    assert sorted(one) == list(range(203))


def test_batches_hold_samples_of_similar_length():
    lengths = lengths_for(sum(SIZES))
    plain, grouped = sampler(sample_lengths=None), sampler()
    assert spread(list(grouped), lengths, 4) < 0.25 * spread(list(plain), lengths, 4)
    # padding of right-padded batches: Σ (longest × batch − Σ lengths)
    def padding(order):
        return sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches(np.asarray(order), 4))
    assert padding(list(grouped)) < 0.25 * padding(list(plain))
    # the batch holding the longest sample comes first; the rest in shuffled order, not sorted
    order = list(grouped)
    assert lengths.max() in lengths[order[:4]]
    maxima = [lengths[b].max() for b in batches(np.asarray(order), 4)][1:]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_grouping_stays_inside_megabatches():
    """Megabatch k (of ``megabatch`` batches) of the plain shuffled order gives the batches of megabatch k's
    samples: with one batch per megabatch the order is the plain one with each batch sorted."""
    lengths = lengths_for(sum(SIZES))
    plain = sampler(sample_lengths=None)
    grouped = sampler(megabatch=1)
    expected = [sorted(b, key=lambda i: -lengths[i]) for b in batches(plain.epoch_order(), 4)]
    got = batches(grouped.epoch_order(), 4)
    assert sorted(map(tuple, got)) == sorted(map(tuple, expected))


def test_lengths_may_be_a_function_of_the_epoch():
    """A function of the epoch (the data module's: prompt phrasings are drawn per epoch) is asked for the epoch
    being iterated."""
    asked = []

    def per_epoch(epoch):
        asked.append(epoch)
        return lengths_for(sum(SIZES), seed=epoch)

    s = sampler(sample_lengths=per_epoch)
    s.set_epoch(2)
    got = list(s)
    fixed = sampler(sample_lengths=lengths_for(sum(SIZES), seed=2))
    fixed.set_epoch(2)
    assert asked == [2] and got == list(fixed)


def test_grouped_resume_skips_what_was_trained():
    progress = {"done": 0}
    s = sampler(progress=lambda: (progress["done"], 50))
    s.set_epoch(0)
    epoch0 = list(s)
    progress["done"] = 50 + 7  # epoch 1, 7 batches of 4 trained
    s.set_epoch(1)
    rest = list(s)
    uninterrupted = sampler()
    uninterrupted.set_epoch(1)
    full = list(uninterrupted)
    assert rest == full[28:] and full != epoch0


def test_grouped_shards_give_the_single_process_batches():
    """Batch k of each of 2 ranks (batch 3) together are batch k of one process with batch size 6, so a run's
    data does not depend on its device count, with length grouping too."""
    lengths = lengths_for(sum(SIZES))
    kw = {"num_samples": 59, "sample_lengths": lengths, "megabatch": 3}
    single = list(MixtureSampler(SIZES, RATIOS, seed=3, batch_size=6, **kw))
    shards = [list(MixtureSampler(SIZES, RATIOS, seed=3, batch_size=3, num_replicas=2, rank=r, **kw))
              for r in (0, 1)]
    assert [len(s) for s in shards] == [30, 30]
    together = [sorted(a + b) for a, b in zip(batches(shards[0], 3), batches(shards[1], 3))]
    assert together[:9] == [sorted(b) for b in batches(single, 6)][:9]  # the 10th holds the wrapped-around one
    # each rank's batches are grouped too (megabatches of 3 global batches of 6: a third of the range per batch)
    assert spread(shards[0], lengths, 3) < 0.7 * spread(list(MixtureSampler(
        SIZES, RATIOS, seed=3, batch_size=3, num_replicas=2, rank=0, num_samples=59)), lengths, 3)


def test_bad_lengths_and_megabatch_are_errors():
    with pytest.raises(ValueError, match="sample_lengths: 3 lengths for 200 samples"):
        list(sampler(sample_lengths=[1, 2, 3]))
    with pytest.raises(ValueError, match="megabatch"):
        sampler(megabatch=0)


# -- the estimate and the data module, on the synthetic set ------------------------------------------------
@pytest.fixture(scope="module")
def tiny_parts(tiny_workspace):
    import torch
    from omegaconf import OmegaConf

    from regionvlm.config import load_config
    from regionvlm.engine.build import build_model_and_tokenizer

    cfg = OmegaConf.to_container(load_config("projects/rgpt/tiny/stage2.yaml", ["model.init_from=null"]),
                                 resolve=True)
    torch.manual_seed(0)
    model, tok, _ = build_model_and_tokenizer(cfg["model"])
    data = {k: v for k, v in cfg["data"].items() if k not in ("processor", "val")}
    data.update(num_workers=0, batch_size=4)
    return data, model, tok


def datamodule(tiny_parts, **kw):
    from regionvlm.data.datamodule import RegionDataModule
    from regionvlm.processor import DATA_KEYS, RegionProcessor

    data, model, tok = tiny_parts
    data = {**data, **kw}
    processor = RegionProcessor.from_training_config(data, model, tok)
    return RegionDataModule(processor, seed=0, **{k: v for k, v in data.items() if k not in DATA_KEYS})


@pytest.mark.parametrize("template", ["vicuna_v1", "plain"])
def test_estimated_lengths_track_the_collated_lengths(tiny_parts, template):
    """Grouped samples (2 to 6 regions of an image each): the estimate at an epoch's prompt phrasing is within
    10 % of the collator's length and ranks the samples as the real lengths do (Spearman ≥ 0.9); the next epoch
    draws other phrasings and is estimated anew."""
    from scipy.stats import spearmanr

    from regionvlm.data.datamodule import ProcessedDataset

    dm = datamodule(tiny_parts, template=template)
    data = ProcessedDataset(dm.train_sets[0], dm.processor)
    estimates = {}
    for epoch in (0, 1):
        estimate = estimates[epoch] = dm.train_lengths(epoch)
        assert dm.train_sets[0].epoch == epoch
        assert len(estimate) == len(data) == 24
        real = np.array([int(dm.train_collator([data[i]]).attention_mask.sum()) for i in range(len(data))])
        assert np.all(np.abs(estimate - real) <= 0.1 * real), (estimate, real)
        assert spearmanr(estimate, real).statistic >= 0.9
        assert np.ptp(real) > 0.3 * real.mean()  # the set is heterogeneous enough for the test to mean something
    assert not np.array_equal(estimates[0], estimates[1])
    assert dm.train_lengths(0) is not estimates[0] and np.array_equal(dm.train_lengths(0), estimates[0])


def test_a_resumed_run_estimates_the_lengths_of_an_uninterrupted_one(tiny_parts):
    """A data module that starts at epoch 1 (a run resumed there) estimates what one that went through epoch 0
    estimates at epoch 1, so the grouped order, and with it the exact resume, is the same."""
    straight = datamodule(tiny_parts, group_by_length=True)
    straight.train_lengths(0)
    resumed = datamodule(tiny_parts, group_by_length=True)
    assert np.array_equal(resumed.train_lengths(1), straight.train_lengths(1))
    assert resumed._chars_per_token == straight._chars_per_token


def test_estimate_counts_image_and_region_placeholders(tiny_parts):
    """One more region tag adds ``tokens_per_region``; no image tag removes ``num_image_tokens``."""
    from regionvlm.data.lengths import TextCounts

    dm = datamodule(tiny_parts)
    counts = TextCounts(dm.train_collator)
    conv = [{"from": "human", "value": "<image>\nWhat is <region1>?"}, {"from": "gpt", "value": "a cat"}]
    (_, images, regions, eos), = counts([{"conversations": conv}])
    assert (images, regions, eos) == (1, 1, 1)
    conv2 = [{"from": "human", "value": "<region1> or <region2>?"}, {"from": "gpt", "value": "a"}]
    assert counts([{"conversations": conv2}])[0][1:] == (0, 2, 1)


def test_group_by_length_cuts_the_padding_of_the_loader(tiny_parts):
    """The data module's training loader with ``group_by_length``: the same samples, less padding."""
    def epoch(dm):
        ids, real, slots = [], 0, 0
        for b in dm.train_dataloader():
            ids += b.ids
            real, slots = real + int(b.attention_mask.sum()), slots + b.attention_mask.numel()
        return sorted(ids), 1 - real / slots

    plain_ids, plain_waste = epoch(datamodule(tiny_parts, group_by_length=False))
    grouped_ids, grouped_waste = epoch(datamodule(tiny_parts, group_by_length=True, length_megabatch=6))
    assert grouped_ids == plain_ids
    assert grouped_waste < 0.5 * plain_waste, (grouped_waste, plain_waste)


def test_length_megabatch_must_be_a_positive_integer(tiny_parts):
    from regionvlm.errors import ConfigError

    with pytest.raises(ConfigError, match="data.length_megabatch: expected a number of batches >= 1, got 0"):
        datamodule(tiny_parts, length_megabatch=0)
