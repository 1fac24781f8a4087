"""Data: the data directory, image reading, the registry of sets, downloads and the crop stream."""
