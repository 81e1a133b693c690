"""Seeds derived from several integers, always inside the range every torch generator takes."""

from __future__ import annotations

import hashlib

MAX_SEED = 2**63 - 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (any ints, any size, any sign).

    Arithmetic mixing such as ``(seed * p + epoch) * q + index`` overflows what
    ``torch.manual_seed`` accepts once the user's seed is large; hashing does not, and
    nearby inputs still give unrelated streams.
    """
    data = b",".join(str(p).encode() for p in parts)
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "little") & MAX_SEED
