"""The evaluation functions the README and the notebook show, under one name
(`from sigma_vae_jax.evaluation import evaluate; evaluate.load_run(workdir)`).

Each lives in the module of its job: `loading` (load_run, load_test_images), `elbo`
(evaluate_elbo, evaluate_calibrated), `iwae` (iwae_nll), `rate`
(rate_decomposition), `effective_beta` (effective_beta), `fid` (prior_samples,
fid_score); video models have theirs in `video`.
"""

from sigma_vae_jax.evaluation.effective_beta import effective_beta
from sigma_vae_jax.evaluation.elbo import evaluate_calibrated, evaluate_elbo
from sigma_vae_jax.evaluation.fid import fid_score, prior_samples
from sigma_vae_jax.evaluation.iwae import iwae_nll
from sigma_vae_jax.evaluation.loading import load_run, load_test_images
from sigma_vae_jax.evaluation.rate import rate_decomposition

__all__ = ["effective_beta", "evaluate_calibrated", "evaluate_elbo", "fid_score",
           "iwae_nll", "load_run", "load_test_images", "prior_samples",
           "rate_decomposition"]
