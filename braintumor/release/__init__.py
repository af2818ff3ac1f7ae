"""The released model: one compact, checksummed copy of a trained checkpoint, tracked in ``models/``.

``logs/`` is git-ignored and holds training runs (255 MB per ResNet-101
checkpoint, float32); ``models/`` holds the ONE release the product reads by
default (``braintumor detect``, ``braintumor evaluate`` and the app without
``--weights``). ``braintumor export --weights RUN.h5`` writes it:

- ``models/<name>-<sha8>.h5``, the *head* file: HDF5 with every weight tensor
  (or the first ones), the run's config, the class names, the operating point,
  the model card, the per-tensor statistics and the list of further shards with
  their sha256. ``<sha8>`` is the first 8 hex digits of the head file's sha256
  (torchvision's ``resnet101-63fe2227.pth`` convention); the full digest is in
  the card.
- ``models/<name>-<sha8>.part<i>of<n>.h5`` (float16 only): further shards, so
  that no file exceeds :data:`MAX_FILE_BYTES` (GitHub refuses files over 100 MB).
- ``models/<name>-<sha8>.card.json``: the model card (training, val figures,
  licences, files and digests, equivalence check), also rendered into the
  README between :data:`CARD_START` and :data:`CARD_END`.

Storage (``--encoding``): ``float16`` (every tensor with 2+ dimensions as IEEE
half, 2 bytes per weight, relative rounding error <= 2**-11) or ``int8``
(per-output-channel symmetric int8 with one float32 scale per channel, 1 byte
per weight, absolute error <= scale / 2). One-dimensional tensors (biases,
norm gains and offsets: 0.1 % of the weights) stay float32 in both. Loading
always restores float32 into a normal inference :class:`~braintumor.mrcnn.MaskRCNN`
built from the embedded config.

Loading verifies the head file's sha256 against its name (and the card's full
digest when the card is beside it) and each shard against the digest in the
head; a truncated or damaged file is refused with one line naming it.

A checkpoint that is not a release and whose run trained fewer than
``MIN_STEPS_FOR_READING`` steps is a *demo model* (:func:`demo_reason`): the app
and ``detect`` never give it a "no tumor found" verdict.

The package, one module per stage (every arrow downward):
:mod:`~braintumor.release.files` (where releases are, names, checksums) →
:mod:`~braintumor.release.storage` (the HDF5 format, float16/int8 codec, loading) and
:mod:`~braintumor.release.demo` (steps trained, demo models) →
:mod:`~braintumor.release.calibration` (thresholds for bfloat16 inference, kept in the card) →
:mod:`~braintumor.release.card` (the model card) and
:mod:`~braintumor.release.equivalence` (release against checkpoint) →
:mod:`~braintumor.release.export` (``braintumor export``, ``braintumor model-card``).
"""

from braintumor.release import storage
from braintumor.release.card import (CARD_END, CARD_START, LICENCES, build_card, headline_val, metrics_summary,
                                     read_metrics, render_card_markdown, run_summary, update_readme)
from braintumor.release.demo import DEMO_WARNING, DEMO_WARNING_TR, demo_reason, training_steps
from braintumor.release.equivalence import (BOX_TOLERANCE_PX, DICE_TOLERANCE, EQUIVALENCE_FLOOR, EQUIVALENCE_IMAGES,
                                            compare_records, detection_record, records_for, val_samples)
from braintumor.release.export import cli_export, cli_model_card, export
from braintumor.release.files import (DEFAULT_ENCODING, DEFAULT_MODELS_DIR, ENCODINGS, FORMAT_VERSION, MAX_FILE_BYTES,
                                      MAX_TOTAL_BYTES, MODELS_ENV, SHARD_TARGET_BYTES, card_path, default_release,
                                      find_releases, is_release, models_dir, named_like_release, release_files,
                                      sha256_file)
from braintumor.release.storage import (Release, decode_tensor, encode_tensor, load_model_weights, load_release,
                                        load_release_weights, open_release, read_tensors, release_label, write_release)

__all__ = [
    "BOX_TOLERANCE_PX", "CARD_END", "CARD_START", "DEFAULT_ENCODING", "DEFAULT_MODELS_DIR", "DEMO_WARNING",
    "DEMO_WARNING_TR", "DICE_TOLERANCE", "ENCODINGS", "EQUIVALENCE_FLOOR", "EQUIVALENCE_IMAGES", "FORMAT_VERSION",
    "LICENCES", "MAX_FILE_BYTES", "MAX_TOTAL_BYTES", "MODELS_ENV", "SHARD_TARGET_BYTES", "Release", "build_card",
    "card_path", "cli_export", "cli_model_card", "compare_records", "decode_tensor", "default_release", "demo_reason",
    "detection_record", "encode_tensor", "export", "find_releases", "headline_val", "is_release", "load_release",
    "load_model_weights", "load_release_weights", "metrics_summary", "models_dir", "named_like_release", "open_release",
    "read_metrics", "read_tensors", "records_for", "release_files", "release_label", "render_card_markdown", "run_summary",
    "sha256_file", "storage", "training_steps", "update_readme", "val_samples", "write_release",
]
