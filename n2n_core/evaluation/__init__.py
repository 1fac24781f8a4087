"""Evaluation: PSNR conventions and the fixed protocol of METHODS.md §8."""
