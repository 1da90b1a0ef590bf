"""PrivImage companion: differentially private image synthesis with semantics-guided pre-training.

Data flows one way (DESIGN.md): config -> data -> semantics/selection ->
pretrain -> DP fine-tune -> sample -> evaluate -> tables/figures.
"""

__version__ = "0.1.0"
