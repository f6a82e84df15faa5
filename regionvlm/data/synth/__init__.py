"""The bundled synthetic region set and the tiny preset's tokenizer.

Why synthetic: the tiny preset must train and be evaluated on 2 CPU cores in minutes, without downloads, on
data where the *region* matters — each image holds several objects, so "what is <region1>?" cannot be
answered from the image alone. Objects differ in colour, shape, size and fill pattern; the pattern (solid,
striped, dotted) is visible only in the pixels (a mask alone reveals the shape, not the pattern), and objects
overlap or nest, so masks differ from boxes (occluded objects keep only their visible part, a container gets
a hole).

Everything is written **in the official formats** (COCO instances, RefCOCOg refs pickle + instances, VG region
descriptions, POPE jsonl, LLaVA json, the region-conversation jsonl), so the real loaders read it unchanged.
Masks are rasterised by pycocotools from the same polygons that are written, so pixels and annotations agree.
Generation is deterministic per (seed, image index).

Modules: `scenes` (the object vocabulary, one scene's layout and pixels), `writers` (`write_synthetic`),
`benchmark_files` (the `spatial` and `dlc` question files), `tokenizer` (`train_tiny_tokenizer`).
"""
