"""``regionvlm datagen``: RGPT's automated region-caption pipeline, each stage swappable.

1. sources (`sources`): the existing dataset readers (COCO/V3Det instances, VG, RefCOCO, conversation jsonl),
   their regions grouped by image;
2. selection (`selection`): area, crowd flag, classes, at most N per image, seeded;
3. global caption and 4. region close-up caption (`crops`, `captioners`: registry kind ``captioner``), with
   RGPT's prompts from the config (`settings`);
5. verification (`filters`: rules + an optional ``judge``), every drop counted by reason;
6. output: conversation jsonl that the ``conversations`` dataset trains on, and a report (`report`).

The job (`job`, `runner`) captions through Lightning's predict loop, writes atomic per-rank chunks, resumes
after a kill and merges the chunks once every shard is done. See docs/datagen.md.
"""
