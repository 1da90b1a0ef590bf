"""Privacy: the ledger, accounting, calibration and the noisy histogram.

DESIGN.md, Privacy, and paper Sections 3.3 and Appendices D-E:

- `PrivacyLedger` (ledger.py): one per run, every mechanism that touched the
  sensitive data, saved as JSON beside what it protects;
- `compute_epsilon` (accounting.py): RDP via opacus (PRV as a cross-check) of
  DP-SGD composed with the semantic query;
- `calibrate_noise_multiplier` (calibration.py): the DP-SGD sigma that meets a
  target (epsilon, delta) after the query (Theorem E.3);
- `semantic_histogram` / `noisy_histogram` (mechanisms.py): the query's
  histogram and its Gaussian mechanism (Theorem 3.1);
- `dp_noise_generator` / `torch_noise_generator` (noise.py): DP noise sources no
  experiment seed controls.

The statistical audits of these mechanisms, as the training stage runs them,
are in `privimage.mechanism_audit`.
"""

from privimage.privacy.accounting import ACCOUNTANTS, RDP_ORDERS, composition_epsilon, compute_epsilon, query_rdp
from privimage.privacy.calibration import calibrate_noise_multiplier
from privimage.privacy.ledger import PrivacyLedger
from privimage.privacy.mechanisms import noisy_histogram, semantic_histogram
from privimage.privacy.noise import (
    SecureNoiseGenerator,
    dp_noise_generator,
    gaussian_noise,
    generator_name,
    torch_noise_generator,
)

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "PrivacyLedger",
    "SecureNoiseGenerator",
    "calibrate_noise_multiplier",
    "composition_epsilon",
    "compute_epsilon",
    "dp_noise_generator",
    "gaussian_noise",
    "generator_name",
    "noisy_histogram",
    "query_rdp",
    "semantic_histogram",
    "torch_noise_generator",
]
