"""Tables (items, pairs, preferences), pair sampling and datasets."""

from rewardkit.data.tables import (
    ITEMS_SCHEMA,
    LABELS,
    PAIRS_SCHEMA,
    PREFERENCES_SCHEMA,
    QUESTIONS,
    TableError,
    conform,
    empty,
    read_items,
    read_pairs,
    read_preferences,
    read_table,
    write_table,
)

__all__ = [
    "ITEMS_SCHEMA", "PAIRS_SCHEMA", "PREFERENCES_SCHEMA", "QUESTIONS", "LABELS", "TableError", "conform",
    "empty", "read_items", "read_pairs", "read_preferences", "read_table", "write_table",
]
