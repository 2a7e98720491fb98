"""Entity types, items, interactions: the in-memory dataset, its file format, splits and the
synthetic generator."""

from neo_jax.catalog.io import (DatasetError, atomic_directory, interaction_report, load_dataset,
                               write_dataset)
from neo_jax.catalog.splits import (Split, Target, leave_one_out, make_split, temporal_cutoffs,
                                    temporal_split, user_sequences)
from neo_jax.catalog.synthetic import (SyntheticConfig, SyntheticTruth, generate_synthetic,
                                       synthetic_truth, write_synthetic)
from neo_jax.catalog.types import Catalog, Dataset, Interactions, Query, User
