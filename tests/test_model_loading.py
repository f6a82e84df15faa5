"""Loading "pretrained" encoders and LLMs from local dirs written by save_pretrained (the hub-id code path)."""

import json

import pytest
import torch
import transformers

from regionvlm.errors import ConfigError, RegistryError
from regionvlm.image_stats import OPENAI_CLIP_MEAN, SIGLIP_MEAN
from regionvlm.plugins.llms import build_tokenizer
from regionvlm.registry import LLMS, VISION_ENCODERS
from regionvlm.tokens import IMAGE_TOKEN, REGION_TOKEN

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}


def test_clip_from_full_clip_checkpoint(tmp_path):
    torch.manual_seed(0)
    full = transformers.CLIPModel(transformers.CLIPConfig(vision_config=VISION, text_config=TEXT)).eval()
    full.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                    "image_std": [0.4, 0.5, 0.6]}))
    enc = VISION_ENCODERS.build({"type": "hf_clip", "pretrained": str(tmp_path)}).eval()
    assert (enc.out_channels, enc.grid_size, enc.image_size) == (32, (4, 4), 32)
    assert enc.image_mean == (0.1, 0.2, 0.3) and enc.image_std == (0.4, 0.5, 0.6)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = full.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
        ref = hidden[-2][:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
        torch.testing.assert_close(enc(x), ref)        # penultimate layer, CLS dropped, from the saved weights
        cls = VISION_ENCODERS.build({"type": "hf_clip", "pretrained": str(tmp_path), "select_layer": -1,
                                     "select_feature": "cls_patch"}).eval()
        last = hidden[-1]
        torch.testing.assert_close(cls(x), (last[:, 1:] + last[:, :1]).transpose(1, 2).reshape(2, 32, 4, 4))
    assert len(enc.model.encoder.layers) == 2         # the unused last layer is dropped


def test_clip_random_init_uses_clip_defaults():
    enc = VISION_ENCODERS.build({"type": "hf_clip", "config": VISION})
    assert enc.image_mean == OPENAI_CLIP_MEAN and enc(torch.randn(1, 3, 32, 32)).shape == (1, 32, 4, 4)
    with pytest.raises(ConfigError, match="select_layer"):
        VISION_ENCODERS.build({"type": "hf_clip", "config": VISION, "select_layer": -5})
    with pytest.raises(RegistryError, match="did you mean 'select_layer'"):
        VISION_ENCODERS.build({"type": "hf_clip", "config": VISION, "select_layr": -2}, key_path="model.vision_encoder")


def test_siglip_from_full_siglip_checkpoint(tmp_path):
    torch.manual_seed(0)
    full = transformers.SiglipModel(transformers.SiglipConfig(vision_config=VISION, text_config=TEXT)).eval()
    full.save_pretrained(tmp_path)
    enc = VISION_ENCODERS.build({"type": "hf_siglip", "pretrained": str(tmp_path)}).eval()
    assert enc.image_mean == SIGLIP_MEAN and enc.grid_size == (4, 4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = full.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(enc(x), ref.transpose(1, 2).reshape(2, 32, 4, 4))


def test_timm_vit_and_convnet(tmp_path):
    vit = VISION_ENCODERS.build({"type": "timm", "name": "vit_tiny_patch16_224", "img_size": 64,
                                 "model_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}})
    assert (vit.out_channels, vit.grid_size, vit.image_size) == (32, (4, 4), 64)
    x = torch.randn(2, 3, 64, 64)
    vit.eval()
    tokens = vit.model.forward_features(x)[:, vit.model.num_prefix_tokens:]
    torch.testing.assert_close(vit(x), tokens.transpose(1, 2).reshape(2, 32, 4, 4))
    torch.save(vit.model.state_dict(), tmp_path / "vit.pth")
    again = VISION_ENCODERS.build({"type": "timm", "name": "vit_tiny_patch16_224", "img_size": 64,
                                   "pretrained": str(tmp_path / "vit.pth"),
                                   "model_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}}).eval()
    torch.testing.assert_close(again(x), vit(x))
    cnn = VISION_ENCODERS.build({"type": "timm", "name": "resnet18"})
    assert cnn.out_channels == 512 and cnn.grid_size == (7, 7) and len(cnn.image_mean) == 3
    with pytest.raises(ConfigError, match="no model 'not_a_model'"):
        VISION_ENCODERS.build({"type": "timm", "name": "not_a_model"})


def _tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(40)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                               eos_token="</s>")
    tok.save_pretrained(path)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_llm_from_local_dir_and_resized_embeddings(tmp_path, model_type):
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1, vocab_size=43,
                                            tie_word_embeddings=False)
    ref = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    ref.save_pretrained(tmp_path)
    _tokenizer(tmp_path)
    tok = build_tokenizer({"type": "hf_causal_lm", "pretrained": str(tmp_path)})
    n = len(tok)  # Qwen2's tokenizer class adds its own <|endoftext|> (its pad token) before ours
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == n - 2 and tok.convert_tokens_to_ids(REGION_TOKEN) == n - 1
    assert n == (45 if model_type == "llama" else 46) and tok.pad_token is not None
    if model_type == "llama":
        assert tok.pad_token == "<unk>"
        assert tok.tokenize(f"w1 {IMAGE_TOKEN}{IMAGE_TOKEN} w2") == ["w1", IMAGE_TOKEN, IMAGE_TOKEN, "w2"]
    llm = LLMS.build({"type": "hf_causal_lm", "pretrained": str(tmp_path)}, vocab_size=len(tok)).eval()
    assert llm.hidden_size == 32 and llm.vocab_size == n
    emb = llm.get_input_embeddings().weight
    old = ref.get_input_embeddings().weight
    torch.testing.assert_close(emb[:43], old)
    torch.testing.assert_close(emb[43:], old.mean(0).expand(n - 43, -1))
    torch.testing.assert_close(llm.model.get_output_embeddings().weight[n - 1], ref.get_output_embeddings().weight.mean(0))
    ids = torch.tensor([[2, 5, 7]])
    with torch.no_grad():
        out = llm(inputs_embeds=llm.get_input_embeddings()(ids)).logits
        torch.testing.assert_close(out[..., :43], ref(input_ids=ids).logits)


def test_llm_random_init_and_missing_model_type():
    llm = LLMS.build({"type": "hf_causal_lm", "config": {"model_type": "llama", "hidden_size": 16,
                      "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10},
                      "gradient_checkpointing": True}, vocab_size=12)
    assert llm.vocab_size == 12 and getattr(llm.model, "is_activation_checkpointing", None)
    with pytest.raises(ConfigError, match="model_type"):
        LLMS.build({"type": "hf_causal_lm", "config": {"hidden_size": 16}}, vocab_size=12)


def test_a_sentencepiece_only_llm_folder_loads(tmp_path):
    """The flagship's LLM (Vicuna v1.5) ships a sentencepiece tokenizer.model and no tokenizer.json: it must
    load through the same path as any hub id (sentencepiece and protobuf are dependencies)."""
    from conftest import sentencepiece_llm_folder

    folder = sentencepiece_llm_folder(tmp_path / "vicuna-like")
    assert not (folder / "tokenizer.json").exists()
    node = {"type": "hf_causal_lm", "pretrained": str(folder)}
    tok = build_tokenizer(node)
    assert tok.eos_token_id == 2 and "<region_feat>" in tok.get_vocab()
    assert tok.decode(tok("the red circle").input_ids, skip_special_tokens=True).strip() == "the red circle"
    llm = LLMS.build(node, key_path="model.llm", vocab_size=len(tok))
    assert llm.vocab_size == len(tok)


@pytest.mark.parametrize("make", ["empty", "vision_model"])
def test_a_folder_that_is_not_an_llm_is_one_line_naming_the_key(tmp_path, make):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = tmp_path / make
    folder.mkdir()
    if make == "vision_model":
        CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=16)).save_pretrained(folder)
    from regionvlm.engine.build import build_model_and_tokenizer

    model_cfg = {"vision_encoder": {"type": "timm", "name": "resnet18"}, "region_extractor": {"type": "mask_pool"},
                 "projector": {"type": "linear"}, "llm": {"type": "hf_causal_lm", "pretrained": str(folder)}}
    with pytest.raises(ConfigError, match=rf"^model.llm.pretrained: '{folder}' does not hold a (tokenizer|causal LM)"):
        build_model_and_tokenizer(model_cfg)
