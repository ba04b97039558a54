"""Evaluation: a trained run's ELBO, IWAE bound, rate decomposition, FID and video
scores (`evaluate`, with the math in `metrics`, `inception` and `video_metrics`), and
the sweeps of the reproduction scripts (`sweeps`)."""
