"""``python -m bitnet_edu.train --config small|tiny|mini|micro`` — train and export a BitNet b1.58.

The shipped default model was made with::

    python -m bitnet_edu.train --config small --export bitnet_edu/default_model
"""

from __future__ import annotations

import argparse

from .recipe import CONFIGS, run


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bitnet_edu.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--out", default=None, help="work dir for checkpoint/history (default runs/<config>)")
    p.add_argument("--export", default=None, help="HF model directory to write (default <out>/model)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default 2; on a machine shared with other jobs 1 can be much faster)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    run(a.config, a.out, a.export, resume=a.resume, progress=not a.no_progress, threads=a.threads)


if __name__ == "__main__":
    main()
