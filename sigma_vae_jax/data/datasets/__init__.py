"""TFDS builders defined in this package (importing this module registers them).

* `synthetic_shapes`: the built-in default dataset, generated locally in seconds.
* `frey_face`: Frey Face (Roweis' `frey_rawface.mat`), downloaded or taken from the
  TFDS manual directory.

Importing this module imports TensorFlow Datasets; `sigma_vae_jax/__init__.py` does
not import it.
"""

from sigma_vae_jax.data.datasets import frey_face
from sigma_vae_jax.data.datasets import synthetic_shapes

FreyFace = frey_face.FreyFace
SyntheticShapes = synthetic_shapes.SyntheticShapes

__all__ = ["FreyFace", "SyntheticShapes", "frey_face", "synthetic_shapes"]
