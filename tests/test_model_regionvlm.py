"""A tiny RegionVLM end to end: build from a model: node, forward/backward, learning, generate."""

import pytest
import torch
import transformers

from regionvlm.batch import Batch
from regionvlm.errors import ConfigError
from regionvlm.model import RegionVLM, build_model
from regionvlm.plugins.llms import build_tokenizer
from regionvlm.tokens import IGNORE_INDEX, IMAGE_TOKEN, REGION_TOKEN

S = 32  # image side; CLIP patch 8 → 4×4 grid; rgpt_deconv → 16×16 map


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=43, bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(40)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>").save_pretrained(path)
    return str(path)


def _cfg(llm_dir, **over):
    cfg = {
        "vision_encoder": {"type": "hf_clip", "config": {"hidden_size": 32, "intermediate_size": 64,
                                                         "num_hidden_layers": 2, "num_attention_heads": 2,
                                                         "image_size": S, "patch_size": 8}},
        "feature_refiner": {"type": "rgpt_deconv"},
        "global_grid": 2,
        "region_extractor": {"type": "mask_pool", "geometry": "token", "geometry_size": 4, "geometry_hidden": 16},
        "projector": {"type": "mlp2x_gelu"},
        "share_projector": True,
        "llm": {"type": "hf_causal_lm", "pretrained": llm_dir},
        "head": {"type": "lm"},
        "init_from": None, "trainable": ["projector"], "freeze": None,  # engine keys: ignored
    }
    cfg.update(over)
    return cfg


def _build(llm_dir, **over):
    tok = build_tokenizer({"pretrained": llm_dir})
    torch.manual_seed(0)
    return build_model(_cfg(llm_dir, **over), tok), tok


def _batch(tok, model, answers=("w5 w6", "w7"), left_pad=False, with_labels=True):
    """Sample 0: image + region 1 and region 0 of image 0; sample 1: region 0 of its image, no <image>."""
    n, k = model.num_image_tokens, model.tokens_per_region
    img, reg = f"{IMAGE_TOKEN}" * n, f"{REGION_TOKEN}" * k
    prompts = [f"<s> w1 {img} w2 {reg} w3 {reg} w4", f"<s> w1 w2 {reg} w4"]
    rows, labels = [], []
    for p, a in zip(prompts, answers):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        a_ids = tok(a + " </s>", add_special_tokens=False)["input_ids"] if with_labels else []
        rows.append(p_ids + a_ids)
        labels.append([IGNORE_INDEX] * len(p_ids) + a_ids)
    length = max(map(len, rows))
    pad = lambda r, v: ([v] * (length - len(r)) + r) if left_pad else (r + [v] * (length - len(r)))
    input_ids = torch.tensor([pad(r, tok.pad_token_id) for r in rows])
    attention = torch.tensor([pad([1] * len(r), 0) for r in rows])
    masks = torch.zeros(3, S, S)
    masks[0, 2:12, 2:12] = 1      # image 0, top-left square
    masks[1, 18:30, 16:30] = 1    # image 0, bottom-right square
    masks[2, 5:25, 10:14] = 1     # image 1, vertical bar
    boxes = torch.tensor([[2.0, 2, 12, 12], [16, 18, 30, 30], [10, 5, 14, 25]])
    g = torch.Generator().manual_seed(0)
    return Batch(input_ids=input_ids, attention_mask=attention, pixel_values=torch.randn(2, 3, S, S, generator=g),
                 region_masks=masks, region_boxes=boxes, region_image_index=torch.tensor([0, 0, 1]),
                 region_mentions=torch.tensor([1, 0, 2]),
                 labels=torch.tensor([pad(r, IGNORE_INDEX) for r in labels]) if with_labels else None,
                 ids=["a", "b"])


def test_build_properties_and_component_names(llm_dir):
    model, tok = _build(llm_dir)
    assert isinstance(model, RegionVLM)
    assert (model.num_image_tokens, model.tokens_per_region, model.image_size) == (4, 2, S)
    assert len(model.image_mean) == 3 and len(model.image_std) == 3
    names = {n for n, _ in model.named_children()}
    assert names == {"vision_encoder", "feature_refiner", "region_extractor", "projector", "llm", "head"}
    assert model.region_projector is None
    assert model.image_token_id == tok.convert_tokens_to_ids(IMAGE_TOKEN)
    sep, _ = _build(llm_dir, share_projector=False)
    assert isinstance(sep.region_projector, torch.nn.Module) and sep.region_projector is not sep.projector
    grid_none, _ = _build(llm_dir, global_grid=None)
    assert grid_none.num_image_tokens == 16


def test_build_errors(llm_dir):
    with pytest.raises(ConfigError, match="model.projecter: unknown key"):
        _build(llm_dir, projecter={"type": "linear"})
    with pytest.raises(ConfigError, match="share_projector: false"):
        _build(llm_dir, region_extractor={"type": "roi_align", "output_size": 2, "pool": "flatten"})
    flat, _ = _build(llm_dir, region_extractor={"type": "roi_align", "output_size": 2, "pool": "flatten"},
                     share_projector=False)
    assert flat.region_projector.in_channels == 4 * 32


def test_forward_fuses_features_and_scores_answers(llm_dir):
    model, tok = _build(llm_dir)
    model.eval()
    batch = _batch(tok, model)
    out = model(batch, all_logits=True)
    logits = out["logits"]
    assert logits.shape == (*batch.input_ids.shape, len(tok))
    lp = logits[:, :-1].log_softmax(-1)
    tgt = batch.labels[:, 1:]
    valid = tgt != IGNORE_INDEX
    ref = -lp[valid].gather(-1, tgt[valid][:, None]).mean()
    torch.testing.assert_close(out["loss"], ref)
    # the fused embeddings hold exactly the projected image and region features at the placeholders
    with torch.no_grad():
        refined = model.feature_refiner(model.vision_encoder(batch.pixel_values))
        image_tokens = model.projector(torch.nn.functional.adaptive_avg_pool2d(refined, 2).flatten(2).transpose(1, 2))
        regions = model.projector(model.region_extractor(refined, batch.region_masks, batch.region_boxes,
                                                         batch.region_image_index))
        embeds = model.embed(batch)
    ids = batch.input_ids
    torch.testing.assert_close(embeds[0][ids[0] == model.image_token_id], image_tokens[0])
    torch.testing.assert_close(embeds[0][ids[0] == model.region_token_id], torch.cat([regions[1], regions[0]]))
    torch.testing.assert_close(embeds[1][ids[1] == model.region_token_id], regions[2])
    # causality: moving region 0 changes logits only from its (second) mention on
    moved = _batch(tok, model)
    moved.region_masks[0] = torch.roll(moved.region_masks[0], shifts=(12, 0), dims=(0, 1))
    moved.region_boxes[0] += torch.tensor([0.0, 12, 0, 12])
    with torch.no_grad():
        l2 = model(moved, all_logits=True)["logits"]
    first = int((ids[0] == model.region_token_id).nonzero()[2])  # region 0's first token in sample 0
    torch.testing.assert_close(l2[0, :first], logits[0, :first].detach())
    assert (l2[0, first:] - logits[0, first:]).abs().max() > 1e-4
    torch.testing.assert_close(l2[1], logits[1].detach())
    # by default only the scored positions get logits, with the same loss
    sparse = model(batch)
    keep = (batch.labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    assert sparse["logits"].shape == (batch.input_ids.shape[0], len(keep), len(tok))
    torch.testing.assert_close(sparse["logits"], logits[:, keep])
    torch.testing.assert_close(sparse["loss"], out["loss"])


def test_backward_reaches_every_trainable_part_and_learns_regions(llm_dir):
    model, tok = _build(llm_dir)
    model.train()
    # same image, same words, the answer depends only on which region is mentioned
    batch = _batch(tok, model, answers=("w5", "w5"))
    batch.input_ids[1] = batch.input_ids[0]
    batch.attention_mask[1] = batch.attention_mask[0]
    batch.pixel_values[1] = batch.pixel_values[0]
    batch.labels = batch.labels[0:1].repeat(2, 1)
    ans = (batch.labels[1] != IGNORE_INDEX).nonzero()[0]
    batch.labels[1, ans] = tok.convert_tokens_to_ids("w9")
    # regions: 0 = top-left square of image 0; 1 = bottom-right square of image 1 (same pixels as image 0)
    batch.region_masks = batch.region_masks[:2].clone()
    batch.region_boxes = batch.region_boxes[:2].clone()
    batch.region_image_index = torch.tensor([0, 1])
    batch.region_masks[[0, 1]] = batch.region_masks[[1, 0]]
    batch.region_boxes[[0, 1]] = batch.region_boxes[[1, 0]]
    batch.region_masks[1] = torch.tril(batch.region_masks[1])  # a triangle: a different shape, too
    batch.region_mentions = torch.tensor([0, 0, 1, 1])
    loss = model(batch)["loss"]
    loss.backward()
    for name in ("vision_encoder", "feature_refiner", "region_extractor", "projector", "llm"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        opt.zero_grad()
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
    # a model blind to the region cannot go below (ln 2 + 0) / 2 = 0.347 (answer word 50/50, then </s>)
    assert loss.item() < 0.05


def _greedy_without_cache(model, batch, steps):
    embeds = model.embed(batch)
    mask = batch.attention_mask
    out = []
    for _ in range(steps):
        logits = model.llm(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
        nxt = logits.argmax(-1)
        out.append(nxt)
        embeds = torch.cat([embeds, model.llm.get_input_embeddings()(nxt)[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1)


def test_generate_greedy_matches_uncached_loop_and_other_modes(llm_dir):
    model, tok = _build(llm_dir)
    model.eval()
    model.eos_token_id = None  # generate the full length so both paths are compared token for token
    batch = _batch(tok, model, left_pad=True, with_labels=False)
    new = model.generate(batch, max_new_tokens=5)
    assert new.dtype == torch.long and new.shape == (2, 5)
    with torch.no_grad():
        torch.testing.assert_close(new, _greedy_without_cache(model, batch, 5))
    beams = model.generate(batch, max_new_tokens=3, num_beams=2)
    assert beams.shape[0] == 2 and beams.shape[1] <= 3
    torch.manual_seed(0)
    sampled = model.generate(batch, max_new_tokens=3, do_sample=True, temperature=0.7, top_p=0.9)
    assert sampled.shape == (2, 3) and int(sampled.max()) < len(tok)
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(_batch(tok, model, left_pad=False, with_labels=False), max_new_tokens=2)
