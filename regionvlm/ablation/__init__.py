"""Ablations by config (``regionvlm ablate SPEC.yaml``): variants × seeds, each cell trained and evaluated
through the same code as ``regionvlm train`` and ``regionvlm eval``, then one table (mean ± std over seeds) in
Markdown and JSON and a bar chart.

A spec (YAML; ``${oc.env:...}`` resolves; relative paths are the spec file's)::

    train: stage2.yaml                 # the training config every cell starts from (file or recipe name)
    eval: eval.yaml                    # the config whose ``eval:`` section evaluates each cell's export
    overrides: [trainer.max_steps=300] # applied to every cell's training config
    eval_overrides: []                 # applied to every cell's evaluation config
    seeds: [0, 1, 2]
    variants:                          # name → overrides, or {overrides: [...], eval_overrides: [...]}
      baseline: []
      no_refiner: [model.feature_refiner.type=identity]
    metrics: [coco_cls.accuracy]       # table columns, ``benchmark.metric`` (default: every metric)
    splits:                            # per COCO-instances benchmark: accuracy on region subsets (see below)
      coco_cls: {patch_size: 16, image_size: 128, overlap: 0.25}
    output: runs/ablations/NAME        # default: ${REGIONVLM_OUTPUT:-runs}/ablations/<spec file stem>

Cell ``i`` (``--list`` prints them; seed-major, so a sweep cut short already has every variant once) trains
into ``<output>/cells/<variant>-seed<k>/`` and writes ``result.json`` there last, atomically: a cell with that
file is finished and skipped on a rerun; one with a checkpoint but no export resumes from ``last.ckpt``; one
with an export but no result is only evaluated. So ``--cell i`` can run as one task of a job array, and
the table step merges whatever cells have finished.

Splits (RGPT's claims (a) and (b)): ``small`` = regions whose visible mask is smaller than one patch of the
vision encoder (area < patch_size², in the pixels the encoder sees: the image padded to a square and resized
to ``image_size``); ``overlap`` = regions whose box is at least that fraction covered by *other* annotated
objects' masks (overlapping or nested shapes: there a box describes different content than the mask).
"""
