"""Semantics: the query function, the private semantic distribution query, selection and SDS
(paper Sections 3.2-3.3, Eq. 4-5, Appendix A, D)."""

from privimage.semantics.query import NoisySemanticDistribution, query_semantic_distribution
from privimage.semantics.query_function import QueryFunction, train_query_function
from privimage.semantics.sds import dataset_frequencies, semantic_distribution_similarity
from privimage.semantics.selection import (
    QuerySettings,
    Selection,
    build_selection,
    query_settings,
    select_semantics,
    semantics_per_row,
)

__all__ = [
    "NoisySemanticDistribution", "QueryFunction", "QuerySettings", "Selection", "build_selection",
    "dataset_frequencies", "query_semantic_distribution", "query_settings", "select_semantics",
    "semantic_distribution_similarity", "semantics_per_row", "train_query_function",
]
