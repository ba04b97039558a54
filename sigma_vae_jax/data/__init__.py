"""Data: where examples come from and how they reach the devices.

`input_pipeline.get_data_source(config.dataset)` is the one entry point (a
`DataSource` for any dataset in `input_pipeline.DATASETS`); `datasets/` holds the
TFDS builders this package defines (the built-in `synthetic_shapes`, `frey_face`).
`python -m sigma_vae_jax.data.input_pipeline` prepares a dataset ahead of a run.

Importing a module of this package imports TensorFlow (tf.data, TFDS).
"""
