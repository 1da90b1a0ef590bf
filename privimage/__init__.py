"""PrivImage companion: differentially private image synthesis with semantics-guided pre-training.

Data flows one way (DESIGN.md): config -> data -> semantics/selection ->
pretrain -> DP fine-tune -> sample -> evaluate -> tables/figures.
"""

from privimage.threads import configure_cpu_threads

__version__ = "0.1.0"

# Before any module imports torch: libgomp reads its wait policy once, when torch loads it.
configure_cpu_threads()
