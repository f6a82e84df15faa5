"""Per-channel pixel mean/std of the vision-encoder families: the one neutral place that the data side (the
ImageProcessor's defaults) and the vision encoders (their declared ``image_mean``/``image_std``) both import."""

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
