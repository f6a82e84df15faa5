"""``regionvlm datagen``'s driver: preflight, plan, Lightning's predict loop over the unfinished images, merge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regionvlm.datagen.job import caption_images, check_complete, decode, merge, output_rows, read_chunks, write_chunk
from regionvlm.datagen.selection import select_regions
from regionvlm.datagen.settings import DatagenSettings, parse_settings
from regionvlm.datagen.sources import SourceImage, read_sources
from regionvlm.errors import ConfigError
from regionvlm.io import dumps_json


class ImageDataset:
    """The images to caption, decoded in DataLoader workers."""

    def __init__(self, items: list[tuple[int, SourceImage]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        return decode(*self.items[i])


def as_list(batch: list) -> list:
    return batch


def _module_class():
    import lightning as L

    class DatagenModule(L.LightningModule):
        """Captions the predict loop's batches and writes each as a chunk (every rank its own)."""

        def __init__(self, captioner: Any, settings: DatagenSettings, out_dir: Path, judge: Any = None):
            super().__init__()
            self.captioner, self.settings, self.out_dir, self.judge = captioner, settings, out_dir, judge

        def on_predict_start(self) -> None:
            if hasattr(self.captioner, "to"):
                self.captioner.to(self.device)

        def predict_step(self, batch: list, batch_idx: int) -> None:
            write_chunk(self.out_dir, caption_images(batch, self.captioner, self.settings, self.judge))

    return DatagenModule


# -- preflight -------------------------------------------------------------------------------------------------
def _check_templates(s: DatagenSettings) -> None:
    for key, template in (("region", s.prompts.region), ("region_with_class", s.prompts.region_with_class),
                          ("global", s.prompts.global_)):
        try:
            template.format(global_caption="", class_name="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"datagen.prompts.{key}: {type(e).__name__}: {e} (fields: global_caption, "
                              f"class_name)") from None
    try:
        s.filters.judge_prompt.format(class_name="", caption="")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"datagen.filters.judge_prompt: {type(e).__name__}: {e} (fields: class_name, caption)") \
            from None


def preflight(config: dict, s: DatagenSettings, source: str = "") -> None:
    """Before anything is built: every name and key (sources, captioner, judge, trainer), the prompt templates,
    then every missing data file and weight, all in one `ConfigError`."""
    from regionvlm.engine.preflight import TINY_HINT, check_config, missing_data
    from regionvlm.registry import CAPTIONERS, DATASETS, JUDGES

    prefix = f"{source} " if source else ""
    check_config(config, source)
    try:
        for i, node in enumerate(s.sources):
            DATASETS.check_node(node, f"datagen.sources[{i}]")
        CAPTIONERS.check_node(s.captioner, "datagen.captioner")
        if s.judge:
            JUDGES.check_node(s.judge, "datagen.judge")
        _check_templates(s)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from exc
    # the training preflight's path convention (keys `path`, `*_file`, `*_root`), named as datagen's keys
    problems = [p.replace("data.train[", "datagen.sources[", 1) for p in missing_data({"data": {"train": s.sources}})]
    node = dict(s.captioner)
    captioner_cls = CAPTIONERS.get(node.pop("type"))
    if hasattr(captioner_cls, "missing"):
        problems += captioner_cls.missing(**node)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise ConfigError(f"{prefix}{problems[0]}{more}; {TINY_HINT}")


# -- the job ---------------------------------------------------------------------------------------------------
def plan(s: DatagenSettings) -> tuple[list[SourceImage], dict]:
    """The selected images (numbered by position) and the counts of the source and selection stages."""
    images = read_sources(s.sources)
    selected, drops = select_regions(images, s.selection, s.seed)
    counts = {"sources": {"images": len(images), "regions": sum(len(im.regions) for im in images)},
              "selection": {"images": len(selected), "regions": sum(len(im.regions) for im in selected)},
              "selection_drops": dict(drops)}
    return selected, counts


def build_captioner(s: DatagenSettings) -> tuple[Any, Any]:
    from regionvlm.registry import CAPTIONERS, JUDGES

    judge = JUDGES.build(s.judge, key_path="datagen.judge") if s.judge else None
    return CAPTIONERS.build(s.captioner, key_path="datagen.captioner"), judge


def close(captioner: Any) -> None:
    """Stop what a captioner started (a vLLM child process)."""
    if hasattr(captioner, "close"):
        captioner.close()


def dry_run(s: DatagenSettings, selected: list[SourceImage], n: int) -> list[dict]:
    """Caption the shard's first ``n`` images in this process and return their rows; nothing is written."""
    captioner, judge = build_captioner(s)
    mine = [(i, im) for i, im in enumerate(selected) if i % s.num_shards == s.shard][:n]
    try:
        records = caption_images([decode(i, im) for i, im in mine], captioner, s, judge)
    finally:
        close(captioner)
    for rec in records:
        for r in rec["regions"]:
            if r["dropped"]:
                print(f"dropped ({r['dropped']}): {r['id']}: {r['caption']!r}")
    return output_rows(records, s)


def run_datagen(config: dict, source: str = "", dry_run_images: int | None = None) -> dict | None:
    """The whole job (see `regionvlm.datagen.job`). Returns the report once the output is merged, else None
    (another shard is unfinished, or this is not rank 0)."""
    s = parse_settings(config)
    preflight(config, s, source)
    selected, counts = plan(s)
    if dry_run_images is not None:
        for row in dry_run(s, selected, dry_run_images):
            print(dumps_json(row))
        return None
    out_dir = Path(s.output.dir)
    todo = check_complete(read_chunks(out_dir), selected)
    mine = [i for i in todo if i % s.num_shards == s.shard]
    regions = sum(len(selected[i].regions) for i in mine)
    print(f"datagen: {counts['selection']['regions']} regions of {len(selected)} images selected; shard "
          f"{s.shard} of {s.num_shards}: {len(mine)} images ({regions} regions) to caption, "
          f"{len(selected) - len(todo)} images already done; output in {out_dir}")
    if mine:
        import warnings

        from torch.utils.data import DataLoader

        from regionvlm.engine.trainer import build_trainer

        warnings.filterwarnings("ignore", message=".*predict returned None.*")  # chunks are its output
        trainer = build_trainer(config, None, enable_progress_bar=True)
        captioner, judge = build_captioner(s)
        module = _module_class()(captioner, s, out_dir, judge)
        loader = DataLoader(ImageDataset([(i, selected[i]) for i in mine]), batch_size=s.batch_size, shuffle=False,
                            num_workers=s.num_workers, collate_fn=as_list)
        try:
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        finally:
            close(captioner)
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            return None
    report = merge(out_dir, selected, counts, s)
    if report is None:
        left = len(check_complete(read_chunks(out_dir), selected))
        print(f"datagen: shard {s.shard} of {s.num_shards} is done; {left} images of other shards are still to "
              f"caption (the job that finishes last merges the output)")
    return report
