"""The training data lives in csdistill.data.train_data (shared with the teacher cache); this name stays."""
from csdistill.data.train_data import (EpochSampler, TrainData, attach_responses, encode, load_train_data,  # noqa: F401
                                       rank_slice, split_records)
