"""sigma_vae_jax: VAEs with calibrated decoders (the sigma-VAE) in JAX/Flax.

Importing the package is cheap: `sigma_vae_jax.losses` needs only JAX. The
training system (`train`, `input_pipeline`) pulls in TensorFlow lazily, only
when those modules are imported.

TensorFlow serves only the data pipeline here. Unless you set them yourself first,
importing the package sets, for TensorFlow's native start-up logging (read when
TensorFlow is first imported):

* `TF_CPP_MIN_LOG_LEVEL=1`: no C++ INFO lines (CPU-feature notice, tf.data buffer
  notes); warnings and errors still show;
* `TF_ENABLE_ONEDNN_OPTS=0`: TensorFlow's oneDNN kernels off, and with them their
  start-up notice (they speed up TF's matmuls and convolutions, which the data
  pipeline does not run).
"""

import os as _os

for _name, _value in (("TF_CPP_MIN_LOG_LEVEL", "1"), ("TF_ENABLE_ONEDNN_OPTS", "0")):
  _os.environ.setdefault(_name, _value)
del _name, _value

__version__ = "0.1.0"
