"""Data: where examples come from and how they reach the devices.

`input_pipeline.get_data_source(config.dataset)` is the one entry point (a
`DataSource` for any dataset in `dataset_fields.DATASETS`); the other modules, each
with one job:

* `data_source`: `DataSource`, the interface (whole splits, per-process batch streams,
  video clips, a one-line description);
* `tfds_source`: TFDS specs and builders, streamed with tf.data (`TfdsBackend`);
* `files`: your own .npy/.npz arrays and image folders, read into host memory;
* `in_memory`: sources held in host memory (hold-out test splits, `ArrayBackend`);
* `clips`: which consecutive frames of a video make a clip;
* `preprocessing`: centre crop and resize on the host (uint8), `to_float` on device;
* `splits`: hold-out indices, process shards, per-epoch shuffle seeds;
* `dataset_fields`: the values and defaults of the `config.dataset` fields.

`datasets/` holds the TFDS builders this package defines (the built-in
`synthetic_shapes`, `frey_face`). `python -m sigma_vae_jax.data NAME...` (`__main__`)
prepares datasets ahead of a run.

Importing `dataset_fields` (or this package) is cheap; the other modules import
TensorFlow (tf.data, TFDS).
"""
