"""Tables (items, pairs, preferences), pair sampling and datasets."""

from rewardkit.data.candidates import CANDIDATES_SCHEMA, read_candidates, read_generations
from rewardkit.data.hf import grid_path, preferences_table_joined, save_hf_dataset, to_hf_dataset
from rewardkit.data.pairs import STRATEGIES, exposure, merge_pairs, pair_id, sample_pairs
from rewardkit.data.tables import (
    ITEMS_SCHEMA, LABELS, PAIRS_SCHEMA, PREFERENCES_SCHEMA, QUESTIONS, TableError, conform, empty, read_items,
    read_pairs, read_preferences, read_table, write_table
)

__all__ = [
    "ITEMS_SCHEMA", "PAIRS_SCHEMA", "PREFERENCES_SCHEMA", "QUESTIONS", "LABELS", "TableError", "conform",
    "empty", "read_items", "read_pairs", "read_preferences", "read_table", "write_table",
    # the candidates sidecar table; a lab's own generations (candidates.csv)
    "CANDIDATES_SCHEMA", "read_candidates", "read_generations",
    # pair sampling
    "STRATEGIES", "exposure", "merge_pairs", "pair_id", "sample_pairs",
    # Hugging Face datasets export
    "grid_path", "preferences_table_joined", "save_hf_dataset", "to_hf_dataset",
]
