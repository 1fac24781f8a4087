"""Evaluation: PSNR conventions and the fixed protocol of docs/methods.md §8."""
