"""The recipes (YAML configs and the tiny tokenizer), installed as ``regionvlm.recipes``: no code lives here.
``regionvlm train rgpt/tiny/stage2`` names ``rgpt/tiny/stage2.yaml`` of this folder; see regionvlm/config.py."""
