"""Evaluation of trained runs, one module per job: `loading` (a workdir's config,
checkpoint and evaluation sigma), `elbo` (test ELBO, at the run's own and at the
calibrated sigma), `iwae` (importance-weighted bound), `rate` (mutual information and
marginal KL), `effective_beta`, `fid` (prior samples and their FID), `video` (per-frame
ELBO, best-of-N PSNR/SSIM and FID of video models), over the batches of `batches`;
`evaluate` gathers the functions the README shows under one name. The math is in
`metrics`, `inception` and `video_metrics`. The sweeps of the reproduction scripts:
`sweeps` (variants x seeds, trained or reused, evaluated) and `sweep_tables` (their
CSV, Markdown and PNG outputs); their flags are `sigma_vae_jax.sweep_cli`'s."""
