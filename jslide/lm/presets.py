"""Named model and run settings for ``python -m jslide.lm train --preset NAME``: every field
the preset names takes its value unless the command line sets it.

``1b``: 1.10 B parameters, 0.97 M of them read per token (docs/lm.md has the arithmetic).
Four transformer blocks of width 256 whose sparse FFNs hold 524,288 neurons each (1.08 B
parameters together); each token computes the 256 neurons per block its LSH index retrieves
(k-means buckets of about 128 neurons), so the FFN parameters grow with ``hidden`` while the
work per token does not. The token embedding, the lsh head and the FFN kernels are
row-sparse bfloat16 tables with bfloat16 Adam moments (6 bytes a parameter in all, updates
rounded stochastically). Indices are rebuilt less often than by default (a rebuild refits
four k-means indices over 524,288 rows, about 12 s each) and only on their schedule, not
before each evaluation; evaluations run every 10 minutes of training on 16,384 tokens,
without the exact-FFN perplexity (the dense forward pass of a billion-parameter FFN).
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "1b": {
        # model
        "vocab_size": 50_000, "context": 64, "features": 256, "heads": 4, "layers": 4,
        "hidden": 524_288, "ffn": "sparse", "ffn_active": 256, "head": "lsh",
        "retrieved": 256, "sampled": 1024, "table_dtype": "bfloat16",
        "moment_dtype": "bfloat16",
        # run
        "batch_size": 16, "eval_every": 0, "eval_seconds": 600.0, "max_eval_tokens": 16_384,
        "eval_exact_ffn": False, "rebuild_before_eval": False, "rebuild_initial": 100,
        "rebuild_growth": 2.0, "rebuild_max": 3200,
    },
}
