#!/usr/bin/env bash
# Sourced: point N2N_DATA at the shared copy of the data sets when one sits beside the project
# (as on the development and CI machines) and the user has not chosen a directory already.
# Otherwise the library falls back to its per-user cache folder.
_n2n_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${N2N_DATA:-}" && -f "$_n2n_root/../shared/data/MANIFEST.tsv" ]]; then
  export N2N_DATA="$(cd "$_n2n_root/../shared/data" && pwd)"
fi
