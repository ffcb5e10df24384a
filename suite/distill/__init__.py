"""Distillation of an attention ViT into a C-GSPN (or hybrid) student, paper Sec. 4.2-4.3.

* :mod:`suite.distill.config`   YAML config, strictly validated (``configs/*.yaml``);
* :mod:`suite.distill.data`     bundled photographs or an image folder, seeded random resized crops;
* :mod:`suite.distill.model`    teacher, student, tap adaptors, the stage-1 and stage-2 modules;
* :mod:`suite.distill.losses`   MSE, token-wise KL, bilinear feature upsampling;
* :mod:`suite.distill.train`    stages, checkpoints and resume, logging, DDP;
* :mod:`suite.distill.evaluate` cosine similarity at PP/PB per block, teacher vs student latency;
* :mod:`suite.distill.report`   the table of several runs (C-GSPN, hybrid, DDP vs single GPU);
* :mod:`suite.distill.cli`      ``cgspn-bench distill`` and ``python -m suite.distill``.
"""


def register_cli(subparsers) -> None:
    """Add ``distill`` to the suite's CLI; imported lazily so ``cgspn-bench --help`` stays light."""
    from suite.distill.cli import register_cli as register

    register(subparsers)


__all__ = ["register_cli"]
