"""The methods of the paper (Section 4.2, DESIGN.md methods table) as data.

Every method is a short recipe over the shared stages: which public data the
generator is pre-trained on, which generator family, and whether fine-tuning
is DP-SGD or plain SGD. All methods of one family share the model size,
fine-tuning hyper-parameters and budget; only pre-training data differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from privimage.errors import PrivImageError


@dataclass(frozen=True)
class Method:
    """One row of the methods table."""

    name: str
    generator: str  # "diffusion" or "gan"
    pretrain_data: str  # "selected" (semantic query), "all" (whole public set) or "none"
    private: bool  # DP-SGD fine-tuning and a noisy query; False: no privacy guarantee at all
    summary: str

    @property
    def uses_query(self) -> bool:
        return self.pretrain_data == "selected"


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("privimage-d", "diffusion", "selected", True,
               "PrivImage+D: diffusion pre-trained on public data selected by the noisy semantic query, DP fine-tuned"),
        Method("privimage-g", "gan", "selected", True,
               "PrivImage+G: GAN pre-trained on the selected public data, DP-SGD on the discriminator"),
        Method("pdp-diffusion", "diffusion", "all", True,
               "PDP-Diffusion: diffusion pre-trained on all public data, DP fine-tuned"),
        Method("dpdm", "diffusion", "none", True, "DPDM: diffusion trained on the sensitive data with DP-SGD only"),
        Method("dpgan", "gan", "none", True, "DPGAN: GAN trained on the sensitive data with DP-SGD only"),
        Method("dpgan-p", "gan", "all", True, "DPGAN-p: GAN pre-trained on all public data, DP fine-tuned"),
        Method("nonpriv-d", "diffusion", "selected", False,
               "NonPrivD: PrivImage+D without noise (exact query, plain SGD): no privacy guarantee"),
        Method("nonpriv-g", "gan", "selected", False,
               "NonPrivG: PrivImage+G without noise (exact query, plain SGD): no privacy guarantee"),
    )
}


def get_method(name: str) -> Method:
    """The method called ``name``; a clear error lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise PrivImageError(f"unknown method '{name}' (known: {', '.join(METHODS)})") from None
