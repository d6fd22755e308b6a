"""Input/output: checkpoints and data sets."""
from .checkpoint import CheckpointError, load_weights, read_state_dict, sha256_file
from .data import DataError, Dataset, NORMALIZATIONS, load_dataset

__all__ = ["CheckpointError", "load_weights", "read_state_dict", "sha256_file", "DataError", "Dataset",
           "NORMALIZATIONS", "load_dataset"]
