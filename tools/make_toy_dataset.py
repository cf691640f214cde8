"""Write the toy emotion data set: short mp4 clips (face + voice), manifests, a tokenizer and the
set's own emotion wheel.

    python tools/make_toy_dataset.py --out data_toy --num 64 --seed 0

Re-running with the same arguments reuses the existing set. See docs/DATA.md.
"""
from __future__ import annotations

import argparse
import time

from megatron_omni.data.toy import TOKENIZER_VOCAB, make_toy_dataset


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num", type=int, default=64, help="number of clips (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--vocab-size", type=int, default=TOKENIZER_VOCAB,
                        help=f"tokenizer vocabulary (default {TOKENIZER_VOCAB})")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    paths = make_toy_dataset(args.out, num=args.num, seed=args.seed, vocab_size=args.vocab_size)
    print(f"toy data set ({args.num} clips, seed {args.seed}) in {time.perf_counter() - started:.1f} s:\n"
          f"  train manifest  {paths.train_manifest}\n  test manifest   {paths.test_manifest}\n"
          f"  tokenizer       {paths.tokenizer_dir}\n  emotion wheel   {paths.wheel_dir}")


if __name__ == "__main__":
    main()
