"""Value types that several sections of backends.yaml share.

A leaf module: :mod:`privatai.config` and the sections kept beside their code
(plans, portal, accounts) import it, and it imports nothing of PrivatAI.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec

# Finite: YAML's .inf passes ``gt=0``, and would make a shutdown wait forever
# or a weighted choice fail on every request.
Positive = Annotated[float, msgspec.Meta(gt=0, le=1e9)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]

# Text an operator shows on the website: one string for every language, or a
# mapping by language ({de: ..., en: ...}); a missing language falls back to the other.
Language = Literal["de", "en"]
Text = Union[str, Annotated[dict[Language, str], msgspec.Meta(min_length=1)]]
